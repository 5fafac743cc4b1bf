"""Named pretrained encoder weights (``imagenet`` and the others smp lists per encoder).

A named weight is fetched by the libraries' own mechanism, ``huggingface_hub``, into the
standard Hugging Face cache (``HF_HUB_CACHE``, by default ``~/.cache/huggingface/hub``;
``HF_HOME`` moves it) the first time a model is built, and read from that cache after,
without any network access (``HF_HUB_OFFLINE=1`` included):

- smp's own encoders (``resnet34``, ...): the ``smp-hub/<encoder>.<weights>`` repository
  at the revision smp pins (``segmentation_models_pytorch.encoders.encoders``);
- timm encoders (``tu-<model>``): ``imagenet`` means timm's default pretrained tag of the
  model (``tu-regnety_002`` -> ``timm/regnety_002.pycls_in1k``); another tag goes in the
  encoder name (``tu-convnext_tiny.fb_in22k``), as smp documents.

Nothing else ever downloads: a checkpoint holds every weight, so predict and export never
need this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from geoseg.errors import ConfigError, first_line


@dataclass(frozen=True)
class HubWeights:
    """Where named weights live on the Hugging Face Hub.

    Attributes:
        encoder: the encoder name of the config.
        weights: the weights name of the config (``imagenet``, ``ssl``, ...).
        repo_id: the Hub repository.
        revision: the pinned commit, or None for the repository's main branch.
        filenames: files to fetch; the last one holds the weights.
    """

    encoder: str
    weights: str
    repo_id: str
    revision: str | None
    filenames: tuple[str, ...]

    def hand_fill_command(self, cache: str) -> str:
        """The ``hf download`` command that fills ``cache`` with these weights."""
        rev = f" --revision {self.revision}" if self.revision else ""
        return f"hf download {self.repo_id} {' '.join(self.filenames)}{rev} --cache-dir {cache}"


def named_weights(encoder: str) -> tuple[str, ...]:
    """The weight names smp (or timm) knows for an encoder; empty when it has none.

    Args:
        encoder: an smp encoder name or ``tu-<timm model>[.<tag>]``.
    """
    if encoder.startswith("tu-"):
        import timm

        return ("imagenet",) if timm.is_model(encoder[3:]) and timm.is_model_pretrained(encoder[3:]) else ()
    from segmentation_models_pytorch.encoders import encoders

    return tuple(encoders[encoder]["pretrained_settings"]) if encoder in encoders else ()


def is_named(value: str | None, encoder: str) -> bool:
    """Whether ``value`` names pretrained weights of ``encoder`` (rather than a local file)."""
    return value is not None and value in named_weights(encoder)


def hub_weights(encoder: str, weights: str) -> HubWeights:
    """The Hub repository, revision and files of named weights.

    Raises:
        ConfigError: the encoder has no weights of that name on the Hub.
    """
    if encoder.startswith("tu-") and weights == "imagenet":
        import timm

        cfg = timm.models.get_pretrained_cfg(encoder[3:])
        hub_id = getattr(cfg, "hf_hub_id", None)
        if hub_id:
            repo, _, rev = str(hub_id).partition("@")
            filename = getattr(cfg, "hf_hub_filename", None) or "model.safetensors"
            return HubWeights(encoder, weights, repo, rev or None, (filename,))
        raise ConfigError(
            f"timm has no Hugging Face Hub weights for encoder '{encoder}'; "
            "set encoder_weights to null (random init) or to a local encoder state-dict file"
        )
    from segmentation_models_pytorch.encoders import encoders

    settings = encoders.get(encoder, {}).get("pretrained_settings", {}).get(weights)
    if settings is None:
        raise ConfigError(unknown_weights_message(weights, encoder))
    return HubWeights(encoder, weights, settings["repo_id"], settings.get("revision"),
                      ("config.json", "model.safetensors"))


def unknown_weights_message(value: str, encoder: str) -> str:
    """The error text for weights that are neither a local file nor a known name."""
    names = named_weights(encoder)
    known = f"one of the named weights of '{encoder}' ({', '.join(names)})" if names else (
        f"a named weight (encoder '{encoder}' has none)")
    return (
        f"encoder_weights '{value}' is neither a local file nor {known}; set it to null "
        "(random init), to a name, or to the path of a local encoder state-dict file "
        "(torch.save(model.encoder.state_dict(), 'enc.pt'))"
    )


def hub_cache() -> str:
    """The Hugging Face Hub cache folder in use (``HF_HUB_CACHE`` / ``HF_HOME``)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def fetch(src: HubWeights) -> Path:
    """The cached weights file of ``src``, downloaded into the Hub cache the first time.

    A file already in the cache is used without any network access. Offline
    (``HF_HUB_OFFLINE=1``) nothing is attempted.

    Returns:
        The local path of the weights file (inside the Hub cache).

    Raises:
        ConfigError: not cached and not downloadable; one line naming the encoder, the
            weights, the cache folder and how to fill it by hand, or to set null.
    """
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

    cache = hub_cache()
    path = ""
    for filename in src.filenames:
        hit = try_to_load_from_cache(src.repo_id, filename, cache_dir=cache, revision=src.revision)
        if isinstance(hit, str):
            path = hit
            continue
        if constants.HF_HUB_OFFLINE:
            raise ConfigError(_missing(src, cache, "HF_HUB_OFFLINE is set"))
        try:
            path = hf_hub_download(src.repo_id, filename, revision=src.revision, cache_dir=cache)
        except Exception as err:  # noqa: BLE001 - network, HTTP, disk: all mean "not fetched"
            reason = first_line(err, 160)
            raise ConfigError(_missing(src, cache, f"download failed: {reason}")) from None
    return Path(path)


def _missing(src: HubWeights, cache: str, reason: str) -> str:
    return (
        f"encoder '{src.encoder}' weights '{src.weights}' are not in the Hugging Face cache "
        f"{cache} and cannot be fetched ({reason}); on a machine with a network run "
        f"`{src.hand_fill_command(cache)}` and copy that folder here (HF_HUB_CACHE or HF_HOME "
        "choose it), or set encoder_weights to null (random init) or to a local encoder "
        "state-dict file"
    )

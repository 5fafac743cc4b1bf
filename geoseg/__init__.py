"""geoseg: directories of satellite and aerial GeoTIFFs to georeferenced polygons."""

__version__ = "0.1.0"

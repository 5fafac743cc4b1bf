"""Reading and writing rasters, vectors and files, safely."""

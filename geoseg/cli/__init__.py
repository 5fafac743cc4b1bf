"""The `geoseg` command line: parsing and progress only, logic lives in the library."""

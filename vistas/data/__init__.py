"""Data: the catalog of known datasets, random-access sources, image transforms and the grain
pipeline (shuffle, shard per process, augment, batch, eval padding).

Modules: `catalog` (find / fetch / list known datasets), `sources` (`load_source`; a facade
over `readers`, one module per format behind the `readers.base.Source` protocol), `decode`
(the one image decoder, with the decompression-bomb pixel limit), `splits` (split and
dataset-spec syntax), `shards` (`vistas data pack/verify`), `transforms`
(`make_train_transform`, `make_eval_transform`), `pipeline` (`train_iterator`,
`eval_batches`).
"""

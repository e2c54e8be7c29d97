"""Data: the catalog of known datasets, random-access sources, image transforms and the grain
pipeline (shuffle, shard per process, augment, batch, eval padding).

Modules: `catalog` (find / fetch / list known datasets), `sources` (`load_source`),
`transforms` (`make_train_transform`, `make_eval_transform`), `pipeline` (`train_iterator`,
`eval_batches`).
"""

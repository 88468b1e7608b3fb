"""Datasets: reprokit's parquet layout and everything that makes, reads, splits and encodes one.

- `layout`: `DatasetSchema`, `Dataset`, `read_dataset`, `write_dataset`, `dataset_fingerprint`.
- `synth`: the synthetic CTR generator (`synth_frame`, `generate_dataset`); labels ``label``,
  ``label_1``, ... for several tasks.
- `movielens`: MovieLens-100k from a local GroupLens or RecBole copy (`load_movielens`).
- `importer`: any CSV/parquet with a label column (`import_file`, `infer_dataset`).
- `ctr_logs`: raw Criteo / Avazu logs, streamed in two passes with BARS conventions (`import_log`).
- `ctr_synth`: generated raw Criteo / Avazu logs (`write_synth_log`).
- `describe`: the describe document and its Rich table.
- `splits`: `split_dataset` (random / temporal), `load_training_data(DataConfig)`.
- `encoding`: `encode(train, eval) -> EncodedData` with train-only vocabularies, `load_encoded`.

Submodules are imported on demand, so `import reprokit.data.layout` stays cheap.
"""

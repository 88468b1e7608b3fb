"""The vectorized engine's parts, one module per job (the driver is `reprokit.training.vectorized`):

- `capability`: what the engine can train, decided from the config and the component registries
  (torch-free; `choose_engine` asks it);
- `layout`: the stacked parameters (`Stack`, `build_stack`) and the ALIGN padding rule;
- `optimizers`: Adagrad / SGD / Adam re-implemented for stacked parameters;
- `backward`: the forward pass, the hand-written backward and the sparse embedding gradient.

Nothing is imported here, so that `capability` stays importable without torch.
"""

"""ViViT Models 1-4 and the term project's 3D CNN on AdrenalMNIST3D (28^3,
normal vs. hyperplasia), small enough to train on a 2-core CPU: the README's
results table (`benchmarks/adrenal_table.py`).

  python run.py --config=configs/adrenal.py:model1 --workdir=/tmp/adrenal_m1

The four ViViTs share width 64, 4 heads, MLP 256 and 7 x 7 x 4 (h x w x t)
tubelets: 4 x 4 tokens for each of 7 groups of 4 slices, 112 tokens. Model 1
has 4 layers of joint space-time attention, Model 2 4 spatial and 2
temporal layers, Model 3 4 blocks of factorised self-attention and Model 4
4 layers whose heads attend half over space, half over time. All five
models train alike: AdamW, 1 epoch of warm-up then cosine decay, batch 32,
with the data set's label-preserving augmentation (`dataset_configs.augmentation`).

VTN and VidTr at the same width (64, 4 heads, MLP 256, 4 layers, 7 x 7
patches: 16 per slice), with the 28 slices as frames:

  vtn    the 4-layer ViT on every slice, then 2 Longformer layers of window
         8 (each slice sees 4 either side) with learned slice positions,
         and the MLP head (64 hidden);
  vidtr  C-VidTr: a 29 x 17 token grid, time down-sampled by topK_std to
         14 slices in layer 1 and 7 in layer 2, as Table 1's schedules.
"""

import ml_collections

from vivit_jax import config_builders
from vivit_jax.data import dataset_configs


# arg -> (attention type, classifier); Models 3 and 4 have no class token.
VIVIT_MODELS = {
    'model1': ('spacetime', 'token'),
    'model2': ('factorized_encoder', 'token'),
    'model3': ('factorized_self_attention_block', 'gap'),
    'model4': ('factorized_dot_product_attention', 'gap'),
}
ARGS = tuple(VIVIT_MODELS) + ('cnn3d', 'vtn', 'vidtr')


def get_config(arg: str = 'model1') -> ml_collections.ConfigDict:
  if arg not in ARGS:
    raise ValueError(f'Unknown config argument {arg!r}: use one of {ARGS}.')
  config = ml_collections.ConfigDict()
  config.experiment_name = f'adrenal_{arg}'
  config.model_dtype_str = 'float32'
  if arg == 'cnn3d':
    config.model_name = 'cnn3d'
    config.model = ml_collections.ConfigDict()
    # Ten times the cost of a step of the ViViTs here, so fewer epochs.
    num_training_epochs = 4
  elif arg == 'vtn':
    config.model_name = 'vtn'
    config.model = config_builders.vtn_model(
        hidden_size=64, num_layers=4, num_heads=4, mlp_dim=256,
        patch_size=(7, 7), temporal_num_layers=2, attention_window=8,
        max_frames=28, head_mlp_dim=64)
    num_training_epochs = 20
  elif arg == 'vidtr':
    config.model_name = 'vidtr'
    config.model = config_builders.vidtr_model(
        hidden_size=64, num_layers=4, num_heads=4, mlp_dim=256,
        patch_size=(7, 7), pooling='topk_std', pool_layers=(1, 2),
        pool_frames=(14, 7))
    num_training_epochs = 20
  else:
    attention_type, classifier = VIVIT_MODELS[arg]
    config.model_name = 'vivit'
    config.model = config_builders.vivit_model(
        hidden_size=64, num_layers=4, num_heads=4, mlp_dim=256,
        patch_size=(7, 7, 4), attention_type=attention_type,
        classifier=classifier, temporal_num_layers=2)
    num_training_epochs = 20

  config.dataset_configs = dataset_configs.medmnist_dataset('adrenalmnist3d')
  config.augmentation = dataset_configs.augmentation('adrenalmnist3d', 28)
  config.update(config_builders.training(
      'adamw', base_learning_rate=1e-3, batch_size=32,
      num_training_epochs=num_training_epochs, warmup_epochs=1.0,
      weight_decay=1e-4))
  config.eval_batch_size = 64
  # With 98 validation volumes, 78% of one class, the validation AUC can
  # peak while every prediction is still that class; the loss ranks better.
  config.checkpoint_metric = 'loss'
  return config

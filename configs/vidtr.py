"""VidTr and C-VidTr (Zhang et al., ICCV 2021, Table 1): ViT-B/16-sized
separable-attention transformers on 224 x 224 RGB clips.

  arg        frames x rate  down-sampling layers -> tau    paper GFLOPs
  s          8 x 8          -                               89
  m          16 x 4         -                               179
  l          32 x 2         -                               351
  compact_s  8 x 8          [1, 2, 4] -> [6, 4, 2]          39
  compact_m  16 x 4         [1, 2, 4] -> [8, 4, 2]          59

  python run.py --config=configs/vidtr.py:compact_s --mode=summary

The compact models pool with topK_std (Eqs. 9-11); 'avg' and 'conv' are
Table 5d's alternatives:
  --config.model.temporal_pooling.method=avg

Section 3.3: initialised from ViT-B (12 heads, so that its attention maps
unchanged), SGD, learning rate 0.01 divided by 10 after epochs 25 and 40
of 50 (here a cosine schedule), weight decay 1e-5, batch 6 per GPU on 64.
"""

import ml_collections
from ml_collections import config_dict

from vivit_jax import config_builders
from vivit_jax.data import dataset_configs

# arg -> (frames, down-sampling layers, frames kept).
VARIANTS = {
    's': (8, (), ()),
    'm': (16, (), ()),
    'l': (32, (), ()),
    'compact_s': (8, (1, 2, 4), (6, 4, 2)),
    'compact_m': (16, (1, 2, 4), (8, 4, 2)),
}


def get_config(arg: str = 's') -> ml_collections.ConfigDict:
  if arg not in VARIANTS:
    raise ValueError(f'Unknown config argument {arg!r}: use one of '
                     f'{tuple(VARIANTS)}.')
  frames, layers, kept = VARIANTS[arg]
  config = ml_collections.ConfigDict()
  config.experiment_name = f'vidtr_{arg}'
  config.model_name = 'vidtr'
  config.model_dtype_str = 'float32'
  config.model = config_builders.vidtr_model(
      hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072,
      patch_size=(16, 16), pooling='topk_std', pool_layers=layers,
      pool_frames=kept)

  config.dataset_configs = dataset_configs.kinetics400_dataset()
  config.dataset_configs.num_frames = frames

  config.init_from = config_builders.init_from(config_dict.placeholder(str))
  config.update(config_builders.training(
      'sgd', base_learning_rate=0.01, batch_size=384, num_training_epochs=50,
      schedule='cosine', momentum=0.9, weight_decay=1e-5))
  return config

"""ViT-B-VTN (Neimark et al., 2021, Sections 3 and 4.1): ViT-Base/16 on
every frame, 1 or 3 Longformer layers of width 768 (12 heads, FFN 3072,
window 32), learned frame positions, and the MLP head; 250 frames of
224 x 224 RGB, the full-video inference of Table 7.

  python run.py --config=configs/vtn.py:3layer --mode=summary
  python run.py --config=configs/vtn.py:1layer --mode=summary

Training starts from an ImageNet-21k ViT-B/16 (Section 4.1) on 16-frame
clips, e.g.

  python run.py --config=configs/vtn.py:3layer --workdir=/tmp/vtn \
      --config.dataset_configs.num_frames=16 \
      --config.init_from.checkpoint_path=/path/to/ViT-B_16.npz

Kinetics-400 is not a data set of this package: the config gives the
paper's shapes for `--mode=summary` and for reading and training code.
"""

import ml_collections
from ml_collections import config_dict

from vivit_jax import config_builders
from vivit_jax.data import dataset_configs

LAYERS = {'1layer': 1, '3layer': 3}


def get_config(arg: str = '3layer') -> ml_collections.ConfigDict:
  if arg not in LAYERS:
    raise ValueError(f'Unknown config argument {arg!r}: use one of '
                     f'{tuple(LAYERS)}.')
  config = ml_collections.ConfigDict()
  config.experiment_name = f'vit_b_vtn_{arg}'
  config.model_name = 'vtn'
  config.model_dtype_str = 'float32'
  # ViT-B/16 backbone; the Longformer is as wide as its features (768, FFN
  # 3072). The paper's effective window is 32 (PySlowFast's configs: 18);
  # 288 learned positions as PySlowFast, enough for the 250 frames.
  config.model = config_builders.vtn_model(
      hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072,
      patch_size=(16, 16), temporal_num_layers=LAYERS[arg],
      attention_window=32, max_frames=288, head_mlp_dim=768)
  config.model.temporal_transformer.attention_dropout_rate = 0.1
  config.model.head.dropout_rate = 0.5  # The paper gives no rate: ours.

  config.dataset_configs = dataset_configs.kinetics400_dataset()
  config.dataset_configs.num_frames = 250  # Full-video inference, Table 7.

  config.init_from = config_builders.init_from(config_dict.placeholder(str))

  # Section 4.1: SGD, learning rate 1e-3, batch 16 (on 16-frame clips).
  config.update(config_builders.training(
      'sgd', base_learning_rate=1e-3, batch_size=16, num_training_epochs=25,
      schedule='cosine', momentum=0.9))
  return config

"""ViViT-2 of the term project (its Table II): ViViT-1 wider and deeper,
width 256, MLP 1024, 8 layers, 8 heads, AdamW at 1e-4; 6,338,059 parameters.

  python run.py --config=configs/termproject_vivit2.py --mode=summary
"""

import ml_collections

from configs import termproject_vivit1


def get_config() -> ml_collections.ConfigDict:
  config = termproject_vivit1.get_config()
  config.experiment_name = 'termproject_vivit2_organmnist3d'
  config.model.hidden_size = 256
  config.model.mlp_dim = 1024
  config.model.num_layers = 8
  config.lr_configs.base_learning_rate = 1e-4
  return config

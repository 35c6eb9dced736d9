"""The ingredients of the MedMNIST 3D recipe: named changes to
configs/medmnist3d.py, applied in turn by `benchmarks.medmnist_ablation` and
compared by `benchmarks.cross_validation`, and the two scripts' shared
`--dataset` and `--data_dir` flags."""

from typing import Sequence

from absl import flags
import numpy as np

from vivit_jax.data import medmnist

# The set and its folder, for both scripts.
DATASET = flags.DEFINE_string('dataset', 'adrenalmnist3d',
                              'configs/medmnist3d.py argument.')
DATA_DIR = flags.DEFINE_string('data_dir', None,
                               'Folder with the set\'s .npz.')


def data_dir_override() -> dict:
  """The `--data_dir` flag as a config override ({} when not given)."""
  return ({'dataset_configs.data_dir': DATA_DIR.value} if DATA_DIR.value
          else {})


# Row name -> (what it changes, the config overrides it adds to the rows
# before it on the command line). FLIPS: the set's label-preserving flips.
# 'first' sets every field that any row sets, so that rows starting from it
# run what they ran whatever configs/medmnist3d.py holds now
# (tests/test_recipe.py checks this).
FLIPS = 'flips'
INGREDIENTS = {
    'recipe': ('configs/medmnist3d.py as it is', {}),
    'first': ('the first recipe: no stem, 4^3 tubelets (343 tokens), shifts '
              'of 3, flips, intensity jitter 0.1, label smoothing 0.1, '
              'stochastic depth 0.1, weight decay 0.05, AdamW at 1e-3, 20 '
              'epochs, 2 of warm-up',
              {'model.stem_features': (), 'model.stem_norm': 'layer',
               'model.patches.size': (4, 4, 4),
               'model.hidden_size': 64, 'model.mlp_dim': 256,
               'model.num_layers': 4, 'model.classifier': 'gap',
               'model.temporal_transformer.mlp_dim': 256,
               'model.dropout_rate': 0.0,
               'model.stochastic_droplayer_rate': 0.1,
               'augmentation.max_shift': 3,
               'augmentation.crop_min_scale': 1.0,
               'augmentation.rotation_plane': (),
               'augmentation.intensity_jitter': 0.1,
               'augmentation.flip_axes': FLIPS,
               'augmentation.eval_flips': False,
               'augmentation.mixup_alpha': 0.0,
               'augmentation.label_smoothing': 0.1,
               'optimizer_configs.weight_decay': 0.05,
               'lr_configs.base_learning_rate': 1e-3, 'batch_size': 32,
               'ema_decay': 0.0, 'sam_rho': 0.0, 'balance_classes': False,
               'ensemble_size': 1,
               'masked_pretraining.num_epochs': 0,
               'masked_pretraining.tube_masking': False,
               'masked_pretraining.mask_ratio': 0.5,
               'checkpoint_metric': 'auc',
               'model.attention_config.type': 'spacetime',
               'num_training_epochs': 20, 'lr_configs.warmup_epochs': 2.0}),
    'stem': ('convolutional stem of 16 and 32 filters, 1^3 tubelets (343 '
             'tokens)', {'model.stem_features': (16, 32),
                         'model.patches.size': (1, 1, 1)}),
    'widestem': ('convolutional stem of 32 and 64 filters (the 3D CNN\'s '
                 'first two widths), 1^3 tubelets (343 tokens)',
                 {'model.stem_features': (32, 64),
                  'model.patches.size': (1, 1, 1)}),
    'bnstem': ('the 3D CNN\'s first two blocks as the stem: 32 and 64 '
               'filters, BatchNorm and ReLU, 1^3 tubelets (343 tokens)',
               {'model.stem_features': (32, 64), 'model.stem_norm': 'batch',
                'model.patches.size': (1, 1, 1)}),
    'bnstem3': ('the 3D CNN\'s three blocks as the stem: 32, 64 and 128 '
                'filters, BatchNorm and ReLU, 1^3 tubelets (27 tokens)',
                {'model.stem_features': (32, 64, 128),
                 'model.stem_norm': 'batch',
                 'model.patches.size': (1, 1, 1)}),
    'plain': ('no augmentation, label smoothing, stochastic depth or weight '
              'decay; 6 epochs, 1 of warm-up',
              {'augmentation.max_shift': 0,
               'augmentation.intensity_jitter': 0.0,
               'augmentation.flip_axes': (),
               'augmentation.label_smoothing': 0.0,
               'model.stochastic_droplayer_rate': 0.0,
               'optimizer_configs.weight_decay': 0.0,
               'num_training_epochs': 6, 'lr_configs.warmup_epochs': 1.0}),
    'flips': ('the set\'s label-preserving flips',
              {'augmentation.flip_axes': FLIPS}),
    'augment': ('the 3D CNN\'s augmentation: shifts of 3 voxels, intensity '
                'jitter 0.1, the set\'s label-preserving flips',
                {'augmentation.max_shift': 3,
                 'augmentation.intensity_jitter': 0.1,
                 'augmentation.flip_axes': FLIPS}),
    'tta': ('the set\'s label-preserving flips in training, and evaluation '
            'averaging the logits over all their combinations',
            {'augmentation.flip_axes': FLIPS,
             'augmentation.eval_flips': True}),
    'crops': ('random resized crops: a cube of 0.8 to 1 of each side at a '
              'random place, resized to the volume (trilinear)',
              {'augmentation.crop_min_scale': 0.8}),
    'rot90': ('in-plane turns by a random multiple of 90 degrees, in the '
              'plane of height and width',
              {'augmentation.rotation_plane': ('height', 'width')}),
    'mixup': ('mixup, alpha 0.2', {'augmentation.mixup_alpha': 0.2}),
    'ema': ('validation, checkpoints and test of the parameters\' moving '
            'average, decay 0.99', {'ema_decay': 0.99}),
    'regularize': ('weight decay 0.05, dropout 0.1 and stochastic depth 0.1 '
                   'in the transformer',
                   {'optimizer_configs.weight_decay': 0.05,
                    'model.dropout_rate': 0.1,
                    'model.stochastic_droplayer_rate': 0.1}),
    'smooth': ('label smoothing 0.1', {'augmentation.label_smoothing': 0.1}),
    'lr3e-4': ('peak learning rate 3e-4 instead of 1e-3',
               {'lr_configs.base_learning_rate': 3e-4}),
    'lr1e-4': ('peak learning rate 1e-4 instead of 1e-3',
               {'lr_configs.base_learning_rate': 1e-4}),
    'wide': ('a transformer of width 128 and MLP 512 (4 heads of 32)',
             {'model.hidden_size': 128, 'model.mlp_dim': 512,
              'model.temporal_transformer.mlp_dim': 512}),
    'sam': ('sharpness-aware minimisation, radius 0.05 (two passes per '
            'step)', {'sam_rho': 0.05}),
    'balance': ('the cross-entropy of each class weighted by N / (K n_k), '
                'n_k its count among the N training volumes',
                {'balance_classes': True}),
    'mim': ('masked volume modelling on the training volumes first '
            '(vivit_jax.masked_modeling): 30 epochs, half the tokens masked, '
            'AdamW at 1e-3', {'masked_pretraining.num_epochs': 30}),
    'tubes75': ('with mim: VideoMAE\'s tube masking, 3/4 of the (h, w) '
                'positions masked through every t',
                {'masked_pretraining.tube_masking': True,
                 'masked_pretraining.mask_ratio': 0.75}),
    'valloss': ('the checkpoint kept as best is the one with the lowest '
                'validation loss (the 3D CNN\'s rule) instead of the highest '
                'AUC', {'checkpoint_metric': 'loss'}),
    'model4': ('Model 4: factorised dot-product attention, half the heads '
               'over space and half over time',
               {'model.attention_config.type':
                    'factorized_dot_product_attention'}),
    'model2': ('Model 2: factorised encoder, the 4 spatial layers over each '
               'slice of tokens, then a temporal encoder of 4 layers (the '
               'paper\'s L_t) over the slices',
               {'model.attention_config.type': 'factorized_encoder'}),
    'model3': ('Model 3: factorised self-attention, each layer attending over '
               'space then over time',
               {'model.attention_config.type':
                    'factorized_self_attention_block'}),
    'ensemble3': ('an ensemble of 3 members from their own seeds, classifying '
                  'by the mean of their probabilities (3x the training)',
                  {'ensemble_size': 3}),
    'depth1': ('a transformer of 1 layer instead of 4',
               {'model.num_layers': 1}),
    'depth2': ('a transformer of 2 layers instead of 4',
               {'model.num_layers': 2}),
    'depth8': ('a transformer of 8 layers instead of 4',
               {'model.num_layers': 8}),
    'token': ('a class token read by the head instead of global average '
              'pooling of the tokens', {'model.classifier': 'token'}),
    'batch16': ('batch 16 instead of 32 (twice the steps)',
                {'batch_size': 16}),
    'epochs12': ('12 epochs, 2 of warm-up',
                 {'num_training_epochs': 12, 'lr_configs.warmup_epochs': 2.0}),
    'epochs20': ('20 epochs, 2 of warm-up',
                 {'num_training_epochs': 20, 'lr_configs.warmup_epochs': 2.0}),
    'epochs40': ('40 epochs, 2 of warm-up',
                 {'num_training_epochs': 40, 'lr_configs.warmup_epochs': 2.0}),
    'epochs60': ('60 epochs, 2 of warm-up',
                 {'num_training_epochs': 60, 'lr_configs.warmup_epochs': 2.0}),
}

# configs/medmnist3d.py is these rows (tests/test_recipe.py checks it).
RECIPE_ROWS = ('first', 'plain', 'bnstem3', 'epochs12', 'lr3e-4',
               'regularize', 'depth2', 'flips', 'epochs40')


def overrides(rows: Sequence[str], dataset: str) -> dict:
  """The config overrides of `rows` applied in turn, for `dataset`."""
  flips = medmnist.default_flip_axes(dataset)
  merged = {}
  for row in rows:
    merged.update({key: flips if value == FLIPS else value
                   for key, value in INGREDIENTS[row][1].items()})
  return merged


def mean_std(values, digits: int = 3) -> str:
  """'mean ± std' (ddof 0) of `values`, or the value when there is one."""
  if len(values) == 1:
    return f'{values[0]:.{digits}f}'
  return f'{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}'

"""Reading pretrained checkpoints: ViT `.npz` files, Hugging Face model
folders, vivit-jax training runs and Scenic checkpoints (`scenic.py`).

Every reader returns a `Checkpoint` whose parameters follow this project's
names: `models.ViT`'s for image checkpoints (embedding, cls,
Transformer/{posembed_input, encoderblock_N, encoder_norm}, pre_logits, head)
and `models.ViViT`'s for video ones (output_projection instead of head;
Model 2 has SpatialTransformer and TemporalTransformer). `mapping` maps
them into a model.
"""

import json
import os
import re
import zipfile

import jax.numpy as jnp
import numpy as np
import safetensors.flax

from vivit_jax import checkpoints
from vivit_jax.pretrained import scenic
from vivit_jax.pretrained.checkpoint import CALL_ORDER_BLOCK_MODULES
from vivit_jax.pretrained.checkpoint import Checkpoint
from vivit_jax.pretrained.checkpoint import CheckpointError
from vivit_jax.pretrained.checkpoint import flatten_variables

FORMATS = ('auto', 'vit_npz', 'huggingface', 'orbax', 'scenic')

# Hugging Face encoder-layer modules, as `save_pretrained` writes them.
_HF_LAYER_MODULES = {
    'layernorm_before': 'LayerNorm_0',
    'attention.attention.query': 'MultiHeadDotProductAttention_1/query',
    'attention.attention.key': 'MultiHeadDotProductAttention_1/key',
    'attention.attention.value': 'MultiHeadDotProductAttention_1/value',
    'attention.output.dense': 'MultiHeadDotProductAttention_1/out',
    'layernorm_after': 'LayerNorm_2',
    'intermediate.dense': 'MlpBlock_3/Dense_0',
    'output.dense': 'MlpBlock_3/Dense_1',
}
# Other Hugging Face modules, and tensors with no place in the models.
_HF_MODULES = {
    'embeddings.patch_embeddings.projection': 'embedding',
    'layernorm': 'Transformer/encoder_norm',
    'pooler.dense': 'pre_logits',
    'classifier': 'head',
    'cls_classifier': 'head',  # DeiTForImageClassificationWithTeacher.
}
_HF_UNUSED = {
    'embeddings.distillation_token': (
        "DeiT's distillation token (and its position): the models have one "
        'class token'),
    'embeddings.mask_token': 'masked-image-modelling token',
    'distillation_classifier.weight': "DeiT's distillation head",
    'distillation_classifier.bias': "DeiT's distillation head",
}
# The config.json defaults of the supported model types, for files that omit
# them.
_HF_IMAGE_DEFAULTS = {
    'num_attention_heads': 12, 'hidden_act': 'gelu', 'layer_norm_eps': 1e-12,
    'image_size': 224, 'patch_size': 16, 'pooler_act': 'tanh'}
_HF_DEFAULTS = {
    'vit': _HF_IMAGE_DEFAULTS,
    'deit': _HF_IMAGE_DEFAULTS,
    'vivit': {'num_attention_heads': 12, 'hidden_act': 'gelu_fast',
              'layer_norm_eps': 1e-6, 'image_size': 224, 'num_frames': 32,
              'tubelet_size': [2, 16, 16], 'pooler_act': 'tanh'},
}
# Hugging Face activation names -> whether they are the tanh GELU.
_HF_GELU_APPROXIMATE = {'gelu': False, 'gelu_new': True, 'gelu_fast': True,
                        'gelu_pytorch_tanh': True}


def detect_format(path: str) -> str:
  """The format of the checkpoint at `path` (see FORMATS)."""
  if not os.path.exists(path):
    raise CheckpointError(
        f'{path} does not exist: set config.init_from.checkpoint_path to a '
        'ViT .npz file, a Hugging Face model folder, a vivit-jax workdir or '
        'a Scenic checkpoint_<step> file or folder.')
  if os.path.isfile(path):
    return 'scenic' if scenic.is_checkpoint_file(path) else 'vit_npz'
  if (os.path.basename(os.path.normpath(path)) == 'checkpoints' or
      os.path.isdir(checkpoints.checkpoint_dir(path))):
    return 'orbax'  # Before config.json: a workdir keeps its config there.
  if os.path.isfile(os.path.join(path, 'config.json')):
    return 'huggingface'
  if scenic.latest_checkpoint(path):
    return 'scenic'
  raise CheckpointError(
      f'{path} is a folder with neither config.json (a Hugging Face model), '
      'checkpoints/ (a vivit-jax workdir) nor checkpoint_<step> files '
      f'(Scenic); found {sorted(os.listdir(path))[:8]}.')


def read_checkpoint(path: str, checkpoint_format: str = 'auto') -> Checkpoint:
  """Reads the checkpoint at `path` in `checkpoint_format` (see FORMATS).

  A file is a Scenic checkpoint when it is named checkpoint_<step>, or when
  `checkpoint_format` is 'scenic'.
  """
  if checkpoint_format not in FORMATS:
    raise ValueError(f'config.init_from.checkpoint_format: unknown format '
                     f'{checkpoint_format!r}. Use one of {FORMATS}.')
  detected = detect_format(path)
  if checkpoint_format == 'scenic' and os.path.isfile(path):
    detected = 'scenic'
  if checkpoint_format not in ('auto', detected):
    raise CheckpointError(
        f'{path} looks like a {detected!r} checkpoint, not '
        f'{checkpoint_format!r}: fix config.init_from.checkpoint_format or '
        "set it to 'auto'.")
  reader = {'vit_npz': read_vit_npz, 'huggingface': read_huggingface,
            'orbax': read_orbax, 'scenic': scenic.read_scenic}[detected]
  return reader(path)


def read_vit_npz(path: str) -> Checkpoint:
  """A google-research/vision_transformer or big_vision ViT `.npz` file.

  vision_transformer files (ViT-B_16.npz and the AugReg ones) already use this
  project's names. big_vision files are renamed: the encoder blocks' modules
  are numbered in call order there (MultiHeadDotProductAttention_0,
  LayerNorm_1, MlpBlock_0), layers may be stacked for `nn.scan`
  (Transformer/encoderblock/... with a leading layer axis), and the
  positional embedding `pos_embedding` is added before the class token is
  prepended, which equals a zero position for the class token.
  """
  if not zipfile.is_zipfile(path):
    raise CheckpointError(
        f'{path} is not a .npz file: pass a ViT .npz file, a Hugging Face '
        'model folder (not its weights file) or a vivit-jax workdir.')
  try:
    with np.load(path, allow_pickle=False) as archive:
      arrays = {name: archive[name] for name in archive.files}
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    raise CheckpointError(f'{path} is not a readable .npz file: {e}') from e
  unused = {}
  if any(name.startswith('params/') for name in arrays):
    unused = {name: 'not a parameter (optimiser state or metadata)'
              for name in arrays if not name.startswith('params/')}
    arrays = {name[len('params/'):]: value for name, value in arrays.items()
              if name.startswith('params/')}
  if 'embedding/kernel' not in arrays or not any(
      name.startswith('Transformer/') for name in arrays):
    raise CheckpointError(
        f'{path} is not a ViT checkpoint: it has no embedding/kernel and '
        f'Transformer/... arrays (its first arrays: {sorted(arrays)[:5]}).')

  params = {}
  big_vision = any('MultiHeadDotProductAttention_0' in name for name in arrays)
  for name, value in arrays.items():
    if name.startswith('MAPHead_0/'):
      unused[name] = ('attention-pooling (MAP) head: the models pool with a '
                      'class token or the mean')
    elif name.startswith('Transformer/encoderblock/'):
      for layer, layer_value in enumerate(value):
        params[name.replace('encoderblock/', f'encoderblock_{layer}/')] = (
            layer_value)
    elif name == 'pos_embedding':
      params['Transformer/posembed_input/pos_embedding'] = value
    else:
      params[name] = value
  if big_vision:
    params = {_rename_big_vision_module(name): value
              for name, value in params.items()}
  if 'pos_embedding' in arrays and 'cls' in arrays:
    posemb = params['Transformer/posembed_input/pos_embedding']
    params['Transformer/posembed_input/pos_embedding'] = np.concatenate(
        [np.zeros_like(posemb[:, :1]), posemb], axis=1)
  return Checkpoint(path, 'vit_npz', params, is_video=False, unused=unused)


def _rename_big_vision_module(name: str) -> str:
  parts = name.split('/')
  if len(parts) > 2 and parts[1].startswith('encoderblock_'):
    parts[2] = CALL_ORDER_BLOCK_MODULES.get(parts[2], parts[2])
  return '/'.join(parts)


def read_huggingface(path: str) -> Checkpoint:
  """A Hugging Face `transformers` model folder: config.json and weights.

  Supported: ViTModel, ViTForImageClassification, DeiTModel,
  DeiT*ForImageClassification*, VivitModel and VivitForVideoClassification,
  with weights in model.safetensors (read without PyTorch), sharded
  safetensors, or pytorch_model.bin (needs PyTorch). Names are those
  `save_pretrained` writes (encoder.layer.N.attention.attention.query, ...).
  PyTorch's Linear weights (out, in) become kernels (in, out); the attention
  projections are split into heads, (d, heads, d / heads).
  """
  with open(os.path.join(path, 'config.json')) as f:
    hf_config = json.load(f)
  model_type = hf_config.get('model_type')
  if model_type not in _HF_DEFAULTS:
    raise CheckpointError(
        f'{path}: model_type {model_type!r} in config.json is not supported; '
        f'use one of {tuple(_HF_DEFAULTS)}.')
  hf_config = {**_HF_DEFAULTS[model_type], **hf_config}
  is_video = model_type == 'vivit'
  tensors = _read_hf_tensors(path)
  has_distillation_token = any(
      name.endswith('embeddings.distillation_token') for name in tensors)

  params, unused = {}, {}
  for full_name, value in tensors.items():
    name = full_name.removeprefix(f'{model_type}.')
    converted = _convert_hf_tensor(name, value,
                                   hf_config['num_attention_heads'],
                                   has_distillation_token,
                                   hf_config['pooler_act'])
    if isinstance(converted, str):
      unused[full_name] = converted
    else:
      params.update(converted)
  if is_video:
    params = {re.sub('^head/', 'output_projection/', name): value
              for name, value in params.items()}

  act = hf_config['hidden_act']
  if act not in _HF_GELU_APPROXIMATE:
    raise CheckpointError(
        f'{path}: hidden_act {act!r} in config.json is not a GELU; the models '
        f'support {sorted(_HF_GELU_APPROXIMATE)}.')
  return Checkpoint(
      path, 'huggingface', params, is_video=is_video,
      grid=_hf_grid(hf_config, is_video),
      gelu_approximate=_HF_GELU_APPROXIMATE[act],
      layer_norm_epsilon=hf_config['layer_norm_eps'], unused=unused)


def _read_hf_tensors(path: str) -> dict[str, np.ndarray]:
  """{name: array} from a model folder's safetensors or PyTorch weights."""
  single = os.path.join(path, 'model.safetensors')
  index = single + '.index.json'
  pickled = os.path.join(path, 'pytorch_model.bin')
  if os.path.isfile(single):
    return _read_safetensors(single)
  if os.path.isfile(index):
    with open(index) as f:
      shards = sorted(set(json.load(f)['weight_map'].values()))
    tensors = {}
    for shard in shards:
      tensors.update(_read_safetensors(os.path.join(path, shard)))
    return tensors
  if os.path.isfile(pickled):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise CheckpointError(
          f'{pickled} is a PyTorch pickle, which needs PyTorch to read: '
          "install the 'parity' extra, or save the model with "
          'safetensors (the default of save_pretrained).') from e
    state = torch.load(pickled, map_location='cpu', weights_only=True)
    return {name: (tensor.float() if tensor.is_floating_point() else
                   tensor).numpy() for name, tensor in state.items()}
  raise CheckpointError(
      f'{path} holds config.json but no model.safetensors, '
      'model.safetensors.index.json or pytorch_model.bin.')


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  """A safetensors file's tensors, floats as float32 (bfloat16 included,
  which numpy's reader cannot read)."""
  return {name: np.asarray(value, np.float32 if jnp.issubdtype(
      value.dtype, jnp.floating) else value.dtype)
          for name, value in safetensors.flax.load_file(path).items()}


def _convert_hf_tensor(name: str, value: np.ndarray, heads: int,
                       has_distillation_token: bool, pooler_act: str):
  """{our name: array} for one Hugging Face tensor, or why it is unused."""
  if name in _HF_UNUSED:
    return _HF_UNUSED[name]
  if name == 'embeddings.patch_embeddings.projection.weight':
    # (d, C, [t,] h, w) -> ([t,] h, w, C, d).
    return {'embedding/kernel': np.moveaxis(value, (0, 1), (-1, -2))}
  if name == 'embeddings.cls_token':
    return {'cls': value}
  if name == 'embeddings.position_embeddings':
    if has_distillation_token:  # Rows: class, distillation, patches.
      value = np.concatenate([value[:, :1], value[:, 2:]], axis=1)
    return {'Transformer/posembed_input/pos_embedding': value}
  parameter = re.fullmatch(r'(.+)\.(weight|bias)', name)
  if not parameter:
    return 'unknown to the Hugging Face reader'
  module, kind = parameter.groups()
  layer = re.fullmatch(r'encoder\.layer\.(\d+)\.(.+)', module)
  if layer and layer.group(2) in _HF_LAYER_MODULES:
    index, layer_module = layer.groups()
    ours = f'Transformer/encoderblock_{index}/{_HF_LAYER_MODULES[layer_module]}'
  elif module == 'pooler.dense' and pooler_act != 'tanh':
    return f'pooler with {pooler_act!r} activation; pre_logits uses tanh'
  elif module in _HF_MODULES:
    ours = _HF_MODULES[module]
  else:
    return 'unknown to the Hugging Face reader'
  if kind == 'bias':
    leaf = 'bias'
  elif 'layernorm' in module:
    leaf = 'scale'
  else:  # A Linear weight (out, in) becomes a kernel (in, out).
    leaf, value = 'kernel', value.T
  return {f'{ours}/{leaf}': _split_heads(value, ours, heads)}


def _split_heads(value: np.ndarray, name: str, heads: int) -> np.ndarray:
  """Attention projections in `nn.MultiHeadDotProductAttention`'s shapes:
  query/key/value kernels (d, heads, d/heads) and biases (heads, d/heads),
  the output kernel (heads, d/heads, d)."""
  module = name.rsplit('/', 1)[-1]
  if module in ('query', 'key', 'value'):
    return value.reshape(*value.shape[:-1], heads, -1)
  if module == 'out' and value.ndim == 2:
    return value.reshape(heads, -1, value.shape[-1])
  return value


def _hf_grid(hf_config: dict, is_video: bool) -> tuple[int, int, int]:
  size = hf_config['image_size']
  height, width = (size, size) if isinstance(size, int) else size
  if is_video:
    ft, fh, fw = hf_config['tubelet_size']
    return hf_config['num_frames'] // ft, height // fh, width // fw
  patch = hf_config['patch_size']
  fh, fw = (patch, patch) if isinstance(patch, int) else patch
  return 1, height // fh, width // fw


def read_orbax(path: str) -> Checkpoint:
  """The parameters of a vivit-jax run (its best, else latest, checkpoint),
  and the running statistics of a BatchNorm stem as 'batch_stats/stem/...'."""
  try:
    variables = checkpoints.restore_eval_variables(path)
  except FileNotFoundError as e:
    raise CheckpointError(f'{path}: {e}') from e
  params = flatten_variables(variables)
  if 'embedding/kernel' not in params:
    raise CheckpointError(
        f'{path} holds a model without patch embedding (the 3D CNN?): only '
        "'vit' and 'vivit' runs can initialise a transformer.")
  is_video = any(name.startswith('output_projection/') for name in params)
  return Checkpoint(path, 'orbax', params, is_video=is_video)

"""vivit-jax entry point.

  python run.py --config=configs/vivit_b.py --workdir=/tmp/vivit   # train
  python run.py --config=configs/vivit_b.py:kinetics400 --mode=summary
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from vivit_jax import summary

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file, optionally FILE:ARG.',
    lock_config=True)
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'summary', 'bench'],
                          'train (then evaluate on test), eval, summary, bench.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Checkpoints, logs, results.')
flags.mark_flag_as_required('config')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  if _MODE.value == 'summary':
    summary.print_summary(config)
    return
  raise app.UsageError(f'--mode={_MODE.value} is not available yet.')


if __name__ == '__main__':
  app.run(main)

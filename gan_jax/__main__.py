import sys

from gan_jax.cli import main

sys.exit(main())

import sys

from convgpu.cli import main

sys.exit(main())

import sys

from convgpu.tools.cli import main

sys.exit(main())

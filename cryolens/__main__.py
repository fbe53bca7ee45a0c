import sys
from cryolens.cli import main
sys.exit(main())

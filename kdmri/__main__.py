import sys

from kdmri.cli import main

sys.exit(main())

"""`python -m minigrad.device`: what works on this machine (driver, GPU, compiler, cache)."""
from minigrad.backend.cuda.doctor import main

raise SystemExit(main())

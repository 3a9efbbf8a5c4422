"""Where the tests find the shared real CIFAR-10 archive (tests that need it skip without it).

$JAXAUG_CIFAR10_TAR if set, else `../shared/data/cifar10-jpeg.tar.gz` next to the checkout.
"""

import os

_CANDIDATES = (
    os.environ.get("JAXAUG_CIFAR10_TAR", ""),
    os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "cifar10-jpeg.tar.gz"),
)
CIFAR_TAR = next((path for path in _CANDIDATES if path and os.path.exists(path)), _CANDIDATES[-1])

"""Training methods behind one contract; `METHODS.get(config.method)` returns a `Method`.

Adding a method is adding a module that defines the functions of `Method`
(`jaxaug.methods.contract`) and registering it here; `jaxaug.config` gives every
method's `default_config()` its own section `config.<name>`, and `jaxaug.train` and
`jaxaug.bench` use nothing else. The conformance tests (tests/test_methods.py) run over
every registered method.
"""

from jaxaug.methods import bilevel, hba, invariant, ohl, reinforce, supervised, uncertainty
from jaxaug.methods.contract import BenchVariant, Method, Sparse, Summaries, to_float_images
from jaxaug.registry import Registry

__all__ = ["METHODS", "BenchVariant", "Method", "Sparse", "Summaries", "to_float_images"]

METHODS: Registry[Method] = Registry("method")
for _name, _module in (("supervised", supervised), ("bilevel", bilevel), ("hba", hba),
                       ("invariant", invariant), ("reinforce", reinforce), ("ohl", ohl),
                       ("uncertainty", uncertainty)):
  METHODS.register(_name)(Method.from_module(_name, _module))
del _name, _module

"""Checkpointer: a state restored into a template that does not fit is refused by name."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxaug import checkpoint
from jaxaug.config import default_config
from jaxaug.methods import METHODS
from jaxaug.methods import training


@pytest.fixture
def saved(tmp_path):
  """A checkpointer holding step 1 of {'a': zeros (20, 4), 'b': [0, 1, 2]}."""
  checkpointer = checkpoint.Checkpointer(str(tmp_path))
  checkpointer.save(1, {"a": jnp.zeros((20, 4)), "b": jnp.arange(3.0)})
  checkpointer.wait()
  yield checkpointer
  checkpointer.close()


def test_restore_into_a_fitting_template(saved):
  restored = saved.restore({"a": jnp.ones((20, 4)), "b": jnp.zeros(3)})
  np.testing.assert_array_equal(restored["b"], [0.0, 1.0, 2.0])
  np.testing.assert_array_equal(restored["a"], np.zeros((20, 4)))


@pytest.mark.parametrize("template,expected", [
    ({"a": jnp.zeros((30, 4)), "b": jnp.zeros(3)}, "['a']: saved (20, 4), now (30, 4)"),
    ({"a": jnp.zeros((20, 4))}, "['b']: saved, not in this run's state"),
    ({"a": jnp.zeros((20, 4)), "b": jnp.zeros(3), "c": jnp.zeros(2)}, "['c']: not saved"),
])
def test_restore_into_a_template_that_does_not_fit(saved, template, expected):
  with pytest.raises(checkpoint.StateMismatchError, match="does not fit") as error:
    saved.restore(template)
  assert expected in str(error.value)
  assert "step 1" in str(error.value)
  assert "; and" not in str(error.value)


def test_a_long_list_of_differences_is_cut(saved):
  template = {"a": jnp.zeros(1), "b": jnp.zeros(3), **{f"new{i}": jnp.zeros(1) for i in range(6)}}
  with pytest.raises(checkpoint.StateMismatchError) as error:
    saved.restore(template)
  shown = checkpoint.SHOWN_DIFFERENCES
  assert str(error.value).count(": not saved") + str(error.value).count("now (") == shown
  assert str(error.value).endswith(f"; and {7 - shown} more")


def test_python_scalars_in_the_template_are_checked_by_shape(tmp_path):
  checkpointer = checkpoint.Checkpointer(str(tmp_path))
  checkpointer.save(1, {"n": 3, "x": 1.5})
  checkpointer.wait()
  assert checkpointer.restore({"n": 0, "x": 0.0}) == {"n": 3, "x": 1.5}
  checkpointer.close()


@pytest.mark.parametrize("name", METHODS.names())
def test_every_methods_initial_state_restores_into_a_fresh_one(tmp_path, name):
  """The check compares the saved leaves' names with `restore`'s own: a real state fits."""
  config = default_config()
  config.update(method=name, model="small_cnn", augment="none")
  config.bilevel.augmenter.kind = "affine"
  info = training.DataInfo.create(num_classes=4, image_shape=(8, 8, 3), batches_per_epoch=4,
                                num_epochs=2)
  init = lambda seed: METHODS.get(name).init(config, jax.random.PRNGKey(seed), info)
  saved, template = init(0), init(1)
  checkpointer = checkpoint.Checkpointer(str(tmp_path))
  checkpointer.save(1, saved)
  checkpointer.wait()
  restored = jax.tree.leaves(checkpointer.restore(template))
  saved, fresh = jax.tree.leaves(saved), jax.tree.leaves(template)
  checkpointer.close()
  assert len(restored) == len(saved)
  for got, want in zip(restored, saved):
    np.testing.assert_array_equal(got, want)
  assert any(not np.array_equal(a, b) for a, b in zip(fresh, saved))  # seed 1 differs

"""Control flow, lists, states, classifiers and multi-function packages on the executor: what
the nested blocks, the list ops and the stateful and multi-function APIs compute, against the
same computation written out in numpy."""

from __future__ import annotations

import coremltools as ct
import numpy as np
import pytest
from coremltools.converters.mil.mil import Builder as mb
from coremltools.converters.mil.mil import types
from hypothesis import given, settings
from hypothesis import strategies as st

from runtimes.base import InputMismatch
from runtimes.mil import MILModel
from tests.runtime.ops.oracle import BOTH_PRECISIONS

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
SOME = settings(max_examples=10, deadline=None)


def _saved(program, path, precision=ct.precision.FLOAT32, **options):
    """``program`` converted and saved as an .mlpackage, so its description is read as a user's would be."""
    model = ct.convert(program, convert_to="mlprogram", compute_precision=precision,
                       minimum_deployment_target=program.functions["main"].opset_version, **options)
    model.save(str(path))
    return path


@BOTH_PRECISIONS
@SOME
@given(st.integers(0, 6), st.data())
def test_while_loop_repeats_its_body_until_its_condition_fails(run_mil, dtype, n, data):
    x = np.array(data.draw(st.lists(st.floats(-2, 2, width=16), min_size=2, max_size=2)), dtype)

    def build(x, n):
        count = mb.squeeze(x=n)
        steps, doubled = mb.while_loop(_cond=lambda i, acc: mb.less(x=i, y=count),
                                       _body=lambda i, acc: (mb.add(x=i, y=np.int32(1)),
                                                             mb.add(x=mb.mul(x=acc, y=dtype(2)), y=dtype(1))),
                                       loop_vars=(np.int32(0), x))
        return [steps, doubled]

    steps, doubled = run_mil(build, {"x": x, "n": np.array([n], np.int32)})
    expected = x.copy()
    for _ in range(n):
        expected = (expected * dtype(2) + dtype(1)).astype(dtype)  # rounded after each op, as the program is
    assert int(steps) == n
    np.testing.assert_array_equal(doubled, expected)


@pytest.mark.parametrize("n", [1, 5])
def test_cond_runs_the_branch_its_predicate_picks(run_mil, n):
    x = np.array([1.0, -2.0], np.float32)

    def build(x, n):
        big = mb.greater(x=mb.squeeze(x=n), y=np.int32(2))
        return mb.cond(pred=big, _true_fn=lambda: mb.mul(x=x, y=np.float32(10)),
                       _false_fn=lambda: mb.sub(x=x, y=np.float32(1)))

    (out,) = run_mil(build, {"x": x, "n": np.array([n], np.int32)})
    np.testing.assert_array_equal(out, x * 10 if n > 2 else x - 1)


def test_a_saved_loop_runs_as_converted(tmp_path):
    """The same loop through a saved package: blocks as coremltools' loader rebuilds them."""
    @mb.program(input_specs=[mb.TensorSpec(shape=(2,)), mb.TensorSpec(shape=(1,), dtype=types.int32)],
                opset_version=ct.target.iOS17)
    def program(x, n):
        count = mb.squeeze(x=n)
        _, acc = mb.while_loop(_cond=lambda i, acc: mb.less(x=i, y=count),
                               _body=lambda i, acc: (mb.add(x=i, y=np.int32(1)), mb.mul(x=acc, y=np.float32(3))),
                               loop_vars=(np.int32(0), x))
        return mb.cond(pred=mb.greater(x=count, y=np.int32(2)), _true_fn=lambda: mb.add(x=acc, y=np.float32(1)),
                       _false_fn=lambda: mb.identity(x=acc))

    model = MILModel(_saved(program, tmp_path / "loop.mlpackage"))
    for n, want in [(2, [9, -18]), (3, [28, -53])]:
        (out,) = model.predict({"x": np.array([1, -2], np.float32), "n": np.array([n], np.int32)}).values()
        assert out.tolist() == want


@BOTH_PRECISIONS
@SOME
@given(st.integers(1, 6))
def test_lists_built_in_a_loop(run_mil, dtype, n):
    """Squares written one per pass, then read, gathered, scattered and measured."""
    def build(x):
        empty = mb.make_list(init_length=1, dynamic_length=True, elem_shape=[2], dtype=types.builtin_to_string(
            types.numpy_type_to_builtin_type(dtype)))

        def body(i, ls):
            value = mb.mul(x=x, y=mb.cast(x=mb.mul(x=i, y=i), dtype=types.builtin_to_string(
                types.numpy_type_to_builtin_type(dtype))))
            return mb.add(x=i, y=np.int32(1)), mb.list_write(ls=ls, index=i, value=value)

        _, filled = mb.while_loop(_cond=lambda i, ls: mb.less(x=i, y=np.int32(n)), _body=body,
                                  loop_vars=(np.int32(0), empty))
        scattered = mb.list_scatter(ls=filled, indices=np.array([0, n], np.int32),
                                    value=mb.fill(shape=np.array([2, 2], np.int32), value=dtype(-1)))
        return [mb.list_length(ls=filled), mb.list_read(ls=filled, index=np.int32(n - 1)),
                mb.list_gather(ls=filled, indices=np.arange(n, dtype=np.int32)),
                mb.list_gather(ls=scattered, indices=np.arange(n + 1, dtype=np.int32)),
                mb.list_length(ls=scattered)]

    x = np.array([1.0, 0.5], dtype)
    length, last, gathered, after, longer = run_mil(build, {"x": x})
    squares = np.arange(n)[:, None] ** 2 * x.astype(np.float64)
    assert int(length) == n and int(longer) == n + 1
    np.testing.assert_array_equal(last, squares[-1].astype(dtype))
    np.testing.assert_array_equal(gathered, squares.astype(dtype))
    expected = np.concatenate([squares, [[-1, -1]]]).astype(dtype)
    expected[0] = -1
    np.testing.assert_array_equal(after, expected)


def test_a_fixed_list_refuses_to_grow(run_mil):
    def build(x):
        ls = mb.make_list(init_length=2, dynamic_length=False, elem_shape=[2], dtype="fp32")
        return mb.list_read(ls=mb.list_write(ls=ls, index=np.int32(2), value=x), index=np.int32(0))

    with pytest.raises(RuntimeError, match="list_write .*out of range for a fixed list of length 2"):
        run_mil(build, {"x": np.ones(2, np.float32)})


# ---- states --------------------------------------------------------------------------------------

@mb.program(input_specs=[mb.StateTensorSpec((2,), dtype=types.fp16), mb.TensorSpec((2,), dtype=types.fp16)],
            opset_version=ct.target.iOS18)
def ACCUMULATOR(acc, x):
    total = mb.add(x=mb.read_state(input=acc), y=x)
    mb.coreml_update_state(state=acc, value=total)
    return mb.mul(x=total, y=total)


@pytest.mark.parametrize("source", ["program", "package"])
def test_states_carry_from_one_prediction_to_the_next(tmp_path, source):
    model = MILModel(ACCUMULATOR if source == "program" else _saved(ACCUMULATOR, tmp_path / "acc.mlpackage",
                                                                   precision=ct.precision.FLOAT16))
    assert [s.name for s in model.input_specs] == ["x"] and [s.name for s in model.state_specs] == ["acc"]
    state, other = model.make_state(), model.make_state()
    x = np.array([1, 2], np.float16)
    outputs = [next(iter(model.predict({"x": x}, state=state).values())) for _ in range(3)]
    assert [o.tolist() for o in outputs] == [[1, 4], [4, 16], [9, 36]]  # (k·x)², k = 1, 2, 3
    np.testing.assert_array_equal(state.read_state("acc"), [3, 6])
    np.testing.assert_array_equal(other.read_state("acc"), [0, 0])  # each state is its own stream
    state.write_state("acc", np.array([10, 10], np.float32))  # written in the state's own type
    assert next(iter(model.predict({"x": x}, state=state).values())).tolist() == [121, 144]
    with pytest.raises(InputMismatch, match=r"states \(acc\): pass state=model.make_state\(\)"):
        model.predict({"x": x})
    with pytest.raises(InputMismatch, match=r"state 'acc' has shape \[2\]"):
        state.write_state("acc", np.zeros(3))


# ---- classifiers and functions ---------------------------------------------------------------------

def test_a_classifier_gives_its_label_and_class_probabilities(tmp_path):
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3))], opset_version=ct.target.iOS17)
    def program(x):
        return mb.softmax(x=x, axis=-1)

    path = _saved(program, tmp_path / "classifier.mlpackage", classifier_config=ct.ClassifierConfig(["a", "b", "c"]))
    outputs = MILModel(path).predict({"x": np.array([[0.1, 2.0, 0.3]], np.float32)})
    e = np.exp([0.1, 2.0, 0.3])
    assert outputs["classLabel"] == "b"
    assert set(outputs["classLabel_probs"]) == {"a", "b", "c"}
    np.testing.assert_allclose([outputs["classLabel_probs"][k] for k in "abc"], e / e.sum(), rtol=1e-6)


def test_a_multi_function_package_runs_the_function_asked_for(tmp_path):
    def single(op, name):
        @mb.program(input_specs=[mb.TensorSpec(shape=(3,))], opset_version=ct.target.iOS18)
        def program(x):
            return op(x)

        return _saved(program, tmp_path / f"{name}.mlpackage")

    descriptor = ct.utils.MultiFunctionDescriptor()
    descriptor.add_function(str(single(lambda x: mb.mul(x=x, y=np.float32(2)), "double")), "main", "double")
    descriptor.add_function(str(single(lambda x: mb.add(x=x, y=np.float32(10)), "shift")), "main", "shift")
    descriptor.default_function_name = "shift"
    ct.utils.save_multifunction(descriptor, str(tmp_path / "both.mlpackage"))
    x = {"x": np.array([1, 2, 3], np.float32)}
    for name, want in [(None, [11, 12, 13]), ("shift", [11, 12, 13]), ("double", [2, 4, 6])]:
        model = MILModel(tmp_path / "both.mlpackage", function_name=name)
        assert next(iter(model.predict(x).values())).tolist() == want
    with pytest.raises(ValueError, match=r"no function 'triple' in the program; it has \['double', 'shift'\]"):
        MILModel(tmp_path / "both.mlpackage", function_name="triple")

"""One definition of a kernel-backed op, run three ways (docs/design.md, "Backends and dispatch").

A method with hand-written kernels defines its op once: a ``forward`` that
returns the op's outputs followed by the tensors its backward needs, a
``backward`` that maps the outputs' gradients (plus what was saved) to the
gradients of the differentiable inputs, and a fake (meta) implementation of
each.  :class:`KernelOp` then runs it

* as a ``torch.library`` custom-op pair ``fastsort::<name>_fwd`` /
  ``fastsort::<name>_bwd`` while ``torch.compile`` traces (opaque to the
  tracer, shapes from the fake implementations, no graph break);
* behind a plain ``torch.autograd.Function`` in eager mode when a gradient is
  needed: a custom op's Python dispatch costs more than the kernels at small
  sizes, and its autograd would materialise zero gradients for every saved
  tensor it returns as an output, which the Function never builds;
* as the bare forward otherwise.

Contract of the two definitions (both must carry type annotations, which
``torch.library`` turns into the ops' schemas)::

    forward(*inputs, need_grad: bool) -> Tuple[Tensor, ...]      # n_outputs outputs, then the saved tensors
    backward(*output_grads, *saved_inputs, *saved_outputs, *saved, *attrs) -> Tensor | Tuple[Tensor, ...]

A forward may also take ``donate: bool = False`` after ``need_grad``: the eager Function runs it
with ``True``, and its backward may then return a saved tensor as a gradient (autograd takes it
over without a copy when the graph is freed, and copies it when the graph is retained); the custom
ops run it with ``False`` (a custom op's outputs may not alias its inputs), so a forward must
return tensors of the same shapes for both (a saved tensor it does not fill is empty).

``attrs`` are the forward's non-tensor inputs in order (without ``need_grad`` and ``donate``);
``saved_inputs`` are the inputs at positions ``save_inputs`` (an op's outputs
may not alias its inputs, so an input the backward needs is saved as an
input); ``saved_outputs`` are the outputs at positions ``save_outputs`` (as
``torch.softmax`` keeps its result: no extra memory while the caller holds the
output, which it usually does); an output gradient is ``None`` in eager mode when that output did not
reach the loss, and may be a zero tensor under ``torch.compile``.  The
backward returns one gradient per position in ``differentiable``.
"""
from __future__ import annotations

import typing
from typing import Callable, Optional, Sequence

import torch
from torch.autograd.function import once_differentiable

__all__ = ["KernelOp"]


class _NoSecondDerivative(torch.autograd.Function):
    """The identity on a first derivative made with ``create_graph=True``, tied to a throwaway leaf that
    requires grad: the derivative then carries a graph (``once_differentiable`` leaves it without one
    when the upstream gradient needs none, so a gradient penalty through it would silently be a
    constant), and differentiating it raises."""

    @staticmethod
    def forward(ctx, grad, anchor, name):
        ctx.name = name
        return grad.clone()

    @staticmethod
    def backward(ctx, _):
        raise RuntimeError(f"fastsort: cannot differentiate twice through {ctx.name} (a gradient penalty, a "
                           "Hessian-vector product): its backward is a hand-written kernel with no derivative of "
                           "its own")


def _no_second_derivative(grads, name: str):
    anchor = torch.zeros((), requires_grad=True)
    return tuple(g if g is None else _NoSecondDerivative.apply(g, anchor, name) for g in grads)


def _is_tensor_annotation(annotation) -> bool:
    return annotation is torch.Tensor or annotation == Optional[torch.Tensor]


class KernelOp:
    """A custom-op pair plus its eager ``autograd.Function`` twin, from one forward/backward definition.

    Args:
        name: the ops are registered as ``fastsort::<name>_fwd`` and ``fastsort::<name>_bwd``.
        forward, backward: the implementations (see the module docstring for their contract).
        forward_fake, backward_fake: the same signatures, returning empty tensors of the right shapes.
        n_outputs: how many of the forward's returned tensors are the op's outputs (the rest are saved).
        differentiable: positions of the inputs that can receive a gradient.
        save_inputs: positions of inputs the backward needs (passed to it after the output gradients).
        save_outputs: positions of outputs the backward needs (passed to it after the saved inputs).

    Calling the op with the forward's inputs (without ``need_grad``) returns the ``n_outputs``
    outputs (a tensor when ``n_outputs == 1``).
    """

    def __init__(self, name: str, forward: Callable, backward: Callable, *, forward_fake: Callable,
                 backward_fake: Callable, n_outputs: int, differentiable: Sequence[int] = (0,),
                 save_inputs: Sequence[int] = (), save_outputs: Sequence[int] = ()):
        self.name = name
        self._forward = forward
        self._backward = backward
        self.n_outputs = n_outputs
        self.differentiable = tuple(differentiable)
        self.save_inputs = tuple(save_inputs)
        self.save_outputs = tuple(save_outputs)
        if any(not 0 <= i < n_outputs for i in self.save_outputs):
            raise ValueError(f"save_outputs {self.save_outputs} must be positions among the {n_outputs} outputs")
        hints = typing.get_type_hints(forward)
        params = [p for p in hints if p not in ("return", "need_grad", "donate")]
        #: the eager Function's last argument(s) to the forward: ``need_grad = True``, and ``donate`` if it takes one
        self._eager_flags = (True, True) if "donate" in hints else (True,)
        self._flag_grads = (None,) * len(self._eager_flags)  # (the custom op's: none for the flags)
        self.n_inputs = len(params)
        self.attr_positions = tuple(i for i, p in enumerate(params) if not _is_tensor_annotation(hints[p]))
        first_attr = self.attr_positions[0] if self.attr_positions else self.n_inputs
        #: the attrs as one slice of the inputs when they are their last positions (the common case; the
        #: custom op's inputs have need_grad after them): a tuple built by a generator costs ~1.5 us a call
        self._attr_slice = (slice(first_attr, self.n_inputs)
                            if self.attr_positions == tuple(range(first_attr, self.n_inputs)) else None)
        #: the ``None`` gradients after the first input's when the first input is the only differentiable one
        self._grad_tail = (None,) * (self.n_inputs - 1) if self.differentiable == (0,) else None

        self.fwd_op = torch.library.custom_op(f"fastsort::{name}_fwd", forward, mutates_args=())
        self.fwd_op.register_fake(forward_fake)
        self.bwd_op = torch.library.custom_op(f"fastsort::{name}_bwd", backward, mutates_args=())
        self.bwd_op.register_fake(backward_fake)
        self.fwd_op.register_autograd(self._compiled_backward, setup_context=self._setup_context)
        self.function = self._make_function()

    # ------------------------------------------------------------------ pieces shared by both paths
    def _attrs(self, inputs) -> tuple:
        if self._attr_slice is not None:
            return tuple(inputs[self._attr_slice])
        return tuple(inputs[i] for i in self.attr_positions)

    def _input_grads(self, grads) -> tuple:
        """The backward's gradients placed at the differentiable positions, ``None`` elsewhere."""
        if self._grad_tail is not None and not isinstance(grads, tuple):  # (the common case: no loop per call)
            return (grads,) + self._grad_tail
        grads = grads if isinstance(grads, tuple) else (grads,)
        out = [None] * self.n_inputs
        for pos, g in zip(self.differentiable, grads):
            out[pos] = g
        return tuple(out)

    # ------------------------------------------------------------------ torch.compile: the custom ops
    def _setup_context(self, ctx, inputs, output):
        saved_inputs = tuple(inputs[i] for i in self.save_inputs)
        ctx.save_for_backward(*saved_inputs, *(output[i] for i in self.save_outputs), *output[self.n_outputs:])
        ctx.attrs = self._attrs(inputs)
        ctx.need_grad = inputs[self.n_inputs]  # (then ``donate``, False, where the forward takes one)

    def _compiled_backward(self, ctx, *grads):
        if not ctx.need_grad:
            raise RuntimeError(f"fastsort: backward through {self.name} run without need_grad")
        grads = self.bwd_op(*grads[:self.n_outputs], *ctx.saved_tensors, *ctx.attrs)
        return self._input_grads(grads) + self._flag_grads

    # ------------------------------------------------------------------ eager mode: a plain Function
    def _make_function(self):
        op = self
        forward, backward, n_outputs, n_inputs = self._forward, self._backward, self.n_outputs, self.n_inputs
        eager_flags = self._eager_flags
        plain_save = not self.save_inputs and not self.save_outputs  # (the common case: no generators per call)
        no_grads = (None,) * n_inputs

        def run_backward(ctx, *grads):
            if (grads[0] is None) if n_outputs == 1 else all(g is None for g in grads):  # no output reached the loss
                return no_grads
            return op._input_grads(backward(*grads, *ctx.saved_tensors, *ctx.attrs))

        # the kernels' backward is not itself differentiable: a second derivative must raise, never be a
        # silent 0.  once_differentiable does that, but its wrapper costs ~10 us a call; outside
        # create_graph=True (grad mode off in the backward, as almost always) it only adds a no_grad
        # region around a call already made without grad, so it is taken only when grad mode is on
        checked_backward = once_differentiable(run_backward)

        class _Function(torch.autograd.Function):
            @staticmethod
            def forward(ctx, *inputs):
                result = forward(*inputs, *eager_flags)
                ctx.set_materialize_grads(False)
                if plain_save:
                    ctx.save_for_backward(*result[n_outputs:])
                else:
                    ctx.save_for_backward(*(inputs[i] for i in op.save_inputs),
                                          *(result[i] for i in op.save_outputs), *result[n_outputs:])
                ctx.attrs = op._attrs(inputs)
                return result[0] if n_outputs == 1 else result[:n_outputs]

            @staticmethod
            def backward(ctx, *grads):
                if torch.is_grad_enabled():  # create_graph=True: the checked path
                    return _no_second_derivative(checked_backward(ctx, *grads), op.name)
                return run_backward(ctx, *grads)

        _Function.__name__ = _Function.__qualname__ = f"{self.name}_function"
        return _Function

    # ------------------------------------------------------------------ the call
    def __call__(self, *inputs):
        if self.differentiable == (0,):  # (no generator for the common case)
            need_grad = torch.is_grad_enabled() and isinstance(inputs[0], torch.Tensor) and inputs[0].requires_grad
        else:
            need_grad = torch.is_grad_enabled() and any(
                isinstance(inputs[i], torch.Tensor) and inputs[i].requires_grad for i in self.differentiable)
        if torch.compiler.is_compiling():
            outputs = self.fwd_op(*inputs, need_grad)[:self.n_outputs]
        elif need_grad:
            return self.function.apply(*inputs)
        else:
            outputs = self._forward(*inputs, False)[:self.n_outputs]
        return outputs[0] if self.n_outputs == 1 else tuple(outputs)

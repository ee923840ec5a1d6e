"""A tab's form as one table of fields: each field is the spec field it fills (also the endpoint's parameter
name), the component that edits it, and the converters between the two.

The table drives everything a form does, so no tab lists its inputs twice:
- the layout places each field's component where it belongs (`Form.place`), built from the spec's `Range`
  (range, step and label come from the spec: one source of truth);
- the handler receives one keyword argument per field (`inputs_kwargs=form.inputs`): the endpoint's
  parameters are the field names and their defaults the components' initial values, i.e. the spec's defaults;
- `spec_values(fields, values)` turns the handler's values into the spec's keyword arguments;
- `Form.restore(settings)` sets the fields a saved settings record holds (a PNG's), skipping what is absent,
  out of range or not offered by this model, with a warning that says so.

Gradio passes named values itself through `inputs_kwargs`, which is why the handlers take `**values` rather
than a dict of components (a set of inputs would give the endpoint no parameter names).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr

from studio.errors import InvalidInputError
from studio.specs import Range, shown

if TYPE_CHECKING:
    from gradio.components import Component

    from studio.engine import Engine

ComponentFactory = Callable[["Engine"], "Component"]


def same(value: Any) -> Any:
    return value


def text(value: Any) -> str:
    """A textbox's value; None (an API caller leaving it out) is the empty text."""
    return "" if value is None else str(value)


def optional_whole(value: Any) -> int | None:
    """A number box that may be empty (None, or NaN from a table cell); inf or a fraction is refused, never
    truncated (int() would raise OverflowError for inf and quietly turn 1.5 into 1)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{value} is not a whole number")
    return int(value)


@dataclass(frozen=True)
class Field:
    """One input of a tab.

    name: the spec field it fills, and the endpoint's parameter name;
    make: builds its component (called where the layout places it; gets the engine for model-dependent choices);
    parse: component value -> spec value (a TypeError or ValueError becomes an InvalidInputError naming the field);
    restore: settings -> component value, or None when the settings do not hold it (see `saved`); None: the field
      is a view option or an input of this run only, never restored;
    in_spec: False for inputs that are not spec fields (an uploaded image, "use the inversion"): the handler
      reads them from its values itself.
    """

    name: str
    make: ComponentFactory
    parse: Callable[[Any], Any] = same
    restore: Callable[[Mapping[str, Any]], Any] | None = None
    in_spec: bool = True


def spec_values(fields: Iterable[Field], values: Mapping[str, Any]) -> dict[str, Any]:
    """The spec's keyword arguments for the handler's values (fields not given keep the spec's defaults)."""
    parsed = {}
    for field in fields:
        if not field.in_spec or field.name not in values:
            continue
        value = values[field.name]
        try:
            parsed[field.name] = field.parse(value)
        except InvalidInputError:
            raise
        except (TypeError, ValueError, OverflowError) as error:  # OverflowError: int(inf)
            raise InvalidInputError(f"{field.name.replace('_', ' ').capitalize()}: {shown(value)} is not valid here.") from error
    return parsed


def seed_from_form(seed: int | None, random_seed: bool | None = None) -> int | None:
    """The spec's seed: None leaves the draw to the engine (which reports the seed it used). `random_seed` is the
    form's "random seed" box (None: the form has none)."""
    if random_seed:
        return None
    if seed is None:
        raise InvalidInputError("Enter a seed." if random_seed is None else "Enter a seed, or tick 'random seed'.")
    return seed


# --------------------------------------------------------------------------------------------
# Components from spec ranges


def slider(bounds: Range, value: float, **options: Any) -> ComponentFactory:
    """A slider over a spec Range (its label unless `label` is given)."""
    options.setdefault("label", bounds.label)
    return lambda engine: gr.Slider(bounds.low, bounds.high, value=value, step=bounds.step, **options)


def number(bounds: Range, value: float | None, **options: Any) -> ComponentFactory:
    """A number box limited to a spec Range (its label unless `label` is given)."""
    options.setdefault("label", bounds.label)
    return lambda engine: gr.Number(value, minimum=bounds.low, maximum=bounds.high, step=bounds.step, **options)


def textbox(**options: Any) -> ComponentFactory:
    """A textbox that starts empty (so the endpoint's parameter defaults to "")."""
    options.setdefault("value", "")
    return lambda engine: gr.Textbox(**options)


def seed_box(elem_id: str, **options: Any) -> ComponentFactory:
    from studio.specs import SEED

    return number(SEED, 0, label="Seed", precision=0, elem_id=elem_id, **options)


def saved(name: str, bounds: Range | None = None) -> Callable[[Mapping[str, Any]], Any]:
    """Restore from settings[name]; None or absent: not restored; outside `bounds`: InvalidInputError."""

    def restore(settings: Mapping[str, Any]) -> Any:
        value = settings.get(name)
        if value is not None and bounds is not None:
            bounds.check(name, value)
        return value

    return restore


# --------------------------------------------------------------------------------------------
# The built form


class Form:
    """A table of fields with their components, built where the layout places them."""

    def __init__(self, fields: Sequence[Field], engine: Engine) -> None:
        self.fields = {field.name: field for field in fields}
        self._engine = engine
        self._components: dict[str, Component] = {}

    def place(self, *names: str) -> list[Component]:
        """Build and render these fields' components in the current layout context, in order."""
        placed = []
        for name in names:
            if name in self._components:
                raise ValueError(f"Field {name!r} is placed twice.")
            self._components[name] = self.fields[name].make(self._engine)
            placed.append(self._components[name])
        return placed

    def __getitem__(self, name: str) -> Component:
        return self._components[name]

    @property
    def inputs(self) -> dict[str, Component]:
        """The handler's keyword inputs (Gradio's `inputs_kwargs`), every field of the table."""
        unplaced = [name for name in self.fields if name not in self._components]
        if unplaced:
            raise ValueError(f"Fields never placed in the layout: {', '.join(unplaced)}.")
        return {name: self._components[name] for name in self.fields}

    def components(self, names: Iterable[str]) -> list[Component]:
        return [self._components[name] for name in names]

    @property
    def restorable(self) -> list[Component]:
        """The outputs of a restore, in table order."""
        return [self._components[name] for name, field in self.fields.items() if field.restore is not None]

    def restore(self, settings: Mapping[str, Any]) -> dict[Component, Any]:
        """Component values for what `settings` hold; every other field is left as it is (gr.skip())."""
        updates: dict[Component, Any] = {}
        for name, field in self.fields.items():
            if field.restore is None:
                continue
            component = self._components[name]
            try:
                value = field.restore(settings)
                if value is not None:
                    _check_offered(component, value)
            except InvalidInputError as error:
                gr.Warning(f"Not restored: {error}")
                value = None
            except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as error:
                # a settings file is untrusted: a value of the wrong type (a string for the steps, a number for a
                # list) fails the field's conversion, and only that field is left as it is
                gr.Warning(f"Not restored: {name.replace('_', ' ')}: the saved value is not what this field takes "
                           f"({type(error).__name__}).")
                value = None
            updates[component] = gr.skip() if value is None else value
        return updates


def _check_offered(component: Component, value: Any) -> None:
    """A choice the component offers (a scheduler, a classifier target of this model)."""
    choices = getattr(component, "choices", None)
    if choices is None or isinstance(value, list):
        return
    offered = [choice[1] if isinstance(choice, tuple) else choice for choice in choices]
    if value not in offered:
        raise InvalidInputError(f"{getattr(component, 'label', None) or 'the value'} {value!r} is not available here.")

"""The training form: a modal screen that returns a TrainRequest (or None when dismissed)."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Select, Static
from textual.widgets.option_list import Option

from core.config import Config, parse_sets, with_overrides
from core.errors import ReelmaskError
from core.training.registry import TRAINERS, check_dataset, with_kind_defaults

FIELDS = (  # input id, label, config key, type
    ("epochs", "epochs", "train.epochs", int),
    ("lr", "learning rate", "train.lr", float),
    ("batch", "batch size", "train.batch_size", int),
    ("size", "image size", "train.img_size", int),
)


@dataclass(frozen=True)
class TrainRequest:
    kind: str
    data: str
    out: str | None
    sets: tuple[str, ...]   # train.* overrides, as --set would give them

    def payload(self) -> dict:
        return {"kind": self.kind, "data": self.data, "out": self.out, "sets": list(self.sets)}


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question before an action that cannot be undone (cancelling a job)."""

    BINDINGS = [Binding("y", "answer(True)", "Yes", show=True), Binding("n", "answer(False)", "No", show=True),
                Binding("escape", "answer(False)", "No", show=False)]

    def __init__(self, question: str, yes: str = "Yes"):
        super().__init__()
        self.question, self.yes = question, yes

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm"):
            yield Label(self.question, id="confirm-text")
            with Horizontal(id="confirm-buttons"):
                yield Button(f"{self.yes} (y)", variant="error", id="yes")
                yield Button("No (n)", id="no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


class EventsScreen(ModalScreen[None]):
    """The events the dashboard has shown, newest last, one line each; the highlighted one is shown
    whole underneath (its time, level, job and full message), however long it is."""

    BINDINGS = [Binding("escape", "dismiss_screen", "Close"), Binding("e", "dismiss_screen", "Close", show=False),
                Binding("q", "dismiss_screen", "Close", show=False)]

    def __init__(self, events: list[dict]):
        super().__init__()
        self.events = list(events)

    def compose(self) -> ComposeResult:
        from tui.widgets import event_line

        with Vertical(id="events-box"):
            yield Label(f"events ({len(self.events)}): arrows select, escape closes", id="events-title")
            options = []
            width = max(20, self.app.size.width - 10)   # one line each, inside the box and the list's border
            for e in self.events:
                line = event_line(e, whole=False)
                line.truncate(width, overflow="ellipsis")
                options.append(Option(line, id=str(e["id"])))
            yield OptionList(*options, id="events-list")
            yield Static(id="events-whole")

    def on_mount(self) -> None:
        listing = self.query_one(OptionList)
        if self.events:
            listing.highlighted = len(self.events) - 1
            self._show(len(self.events) - 1)
        else:
            self.query_one("#events-whole", Static).update(Text("no events yet", style="dim"))
        listing.focus()

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        self._show(event.option_index)

    def _show(self, index: int) -> None:
        from tui.widgets import EVENT_STYLE

        e = self.events[index]
        whole = Text.assemble((e["ts"].replace("T", " ")[:19], "dim"), " ", (e["level"], EVENT_STYLE.get(e["level"], "")))
        if e["job_id"]:
            whole.append(f" · job {e['job_id']}", style="cyan")
        whole.append("\n" + e["message"])
        self.query_one("#events-whole", Static).update(whole)

    def action_dismiss_screen(self) -> None:
        self.dismiss(None)


class TrainForm(ModalScreen[TrainRequest | None]):
    """Kind, dataset, output folder and the main hyper-parameters; checked before it is queued."""

    BINDINGS = [Binding("escape", "dismiss_form", "Close", show=True)]

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg

    def defaults(self, kind: str) -> dict[str, object]:
        """What the four fields start at for `kind`: config values, with 0 meaning the kind's own."""
        try:
            t = with_kind_defaults(self.cfg, kind).train
        except ReelmaskError:  # a config this kind refuses: show the raw values, submit explains
            t = self.cfg.train
        return {"epochs": t.epochs, "lr": t.lr, "batch": t.batch_size, "size": t.img_size}

    def compose(self) -> ComposeResult:
        t = self.cfg.train
        defaults = self.defaults("unet")
        with Vertical(id="train-form"):
            yield Label("Queue a training job", id="train-title")
            with Grid(id="train-grid"):
                yield Label("kind")
                yield Select([(f"{k} - {s.summary}", k) for k, s in TRAINERS.items()], value="unet",
                             allow_blank=False, compact=True, id="kind")
                yield Label("dataset folder")
                yield Input(placeholder="path to the folder holding train/", compact=True, id="data")
                yield Label("output folder")
                yield Input(placeholder=f"empty = {t.out}/<kind>-<dataset name>", compact=True, id="out")
                for key, label, _, _ in FIELDS:
                    yield Label(label)
                    yield Input(str(defaults[key]), compact=True, id=key)
            yield Label("", id="train-error")
            with Horizontal(id="train-buttons"):
                yield Button("Queue", variant="primary", id="submit-training")
                yield Button("Close", id="close")

    def on_select_changed(self, event: Select.Changed) -> None:
        """Another kind: its own defaults (sam2-decoder trains at a lower rate, at SAM2's input size)."""
        for key, value in self.defaults(str(event.value)).items():
            self.query_one(f"#{key}", Input).value = str(value)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "submit-training":
            self.submit()
        else:
            self.dismiss(None)

    def on_input_submitted(self, _event: Input.Submitted) -> None:
        self.submit()

    def action_dismiss_form(self) -> None:
        self.dismiss(None)

    def submit(self) -> None:
        request, problem = self.read()
        if request is None:
            self.query_one("#train-error", Label).update(problem)
            return
        self.dismiss(request)

    @staticmethod
    def _in_form_words(message: str) -> str:
        """The trainers speak to the command line; here the same advice names the form's fields."""
        for cli, form in (("give --data the folder", "give as dataset folder the folder"),
                          ("choose another --out", "choose another output folder"),
                          ("--out ", "the output folder "), ("--data", "the dataset folder")):
            message = message.replace(cli, form)
        return message

    def read(self) -> tuple[TrainRequest | None, str]:
        """The request, or None and what to fix. The dataset is checked here (no torch needed)."""
        kind = str(self.query_one("#kind", Select).value)
        data = self.query_one("#data", Input).value.strip()
        out = self.query_one("#out", Input).value.strip() or None
        if not data:
            return None, "give the dataset folder"
        path = self.cfg.path(data)
        try:
            check_dataset(kind, path)
        except ReelmaskError as e:
            return None, self._in_form_words(str(e))
        sets = []
        for key, label, config_key, kind_of in FIELDS:
            raw = self.query_one(f"#{key}", Input).value.strip()
            try:
                value = kind_of(raw)
            except ValueError:
                return None, f"{label} must be a{'n integer' if kind_of is int else ' number'}, got '{raw}'"
            if value < 0:
                return None, f"{label} must be 0 (the kind's default) or more, got {raw}"
            sets.append(f"{config_key}={value}")
        try:
            with_kind_defaults(with_overrides(self.cfg, parse_sets(sets), "the training form"), kind)
        except ReelmaskError as e:
            return None, self._in_form_words(str(e))
        target = str(self.cfg.path(out).resolve()) if out else None
        return TrainRequest(kind, str(path.resolve()), target, tuple(sets)), ""

"""RETURNN's command-line grammar: config files first, then ``++key value`` and short options.

Only the grammar lives here; :meth:`returnn_ray.config.files.Config.parse_cmd_args` applies the
options to a config, and :mod:`returnn_ray.cli` adds the options of its own.

>>> split_command_line(["setup.config", "++learning_rate", "+-0.1", "-n", "3"])
(['setup.config'], ['++learning_rate', '+-0.1', '-n', '3'])
"""

from __future__ import annotations

from typing import Iterable, Sequence

from returnn_ray.errors import ConfigError

#: RETURNN's command-line options that set one config key (RETURNN's ``Config.parse_cmd_args``;
#: its Theano-era options such as ``-a/--activation`` are left out). Values are applied
#: like ``++key value``.
OPTION_KEYS: dict[str, str] = {
    "-x": "task",
    "--task": "task",
    "-n": "num_epochs",
    "--num_epochs": "num_epochs",
    "-b": "batch_size",
    "--batch_size": "batch_size",
    "-r": "learning_rate",
    "--learning_rate": "learning_rate",
    "-z": "max_seqs",
    "--max_sequences": "max_seqs",
    "-L": "load",
    "--load": "load",
    "-e": "epoch",
    "--epoch": "epoch",
    "-u": "device",
    "--device": "device",
    "-v": "log_verbosity",
    "--verbose": "log_verbosity",
    "-i": "save_interval",
    "--save_interval": "save_interval",
    "-k": "output_file",
    "--output_file": "output_file",
    "-l": "log",
    "--log": "log",
    "-E": "eval",
    "--eval": "eval",
    "-c": "chunking",
    "--chunking": "chunking",
}


def split_command_line(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Splits ``argv`` into config files (leading args up to the first ``-``/``+``) and options.

    >>> split_command_line(["a.config", "b.py", "++x", "1", "c"])
    (['a.config', 'b.py'], ['++x', '1', 'c'])
    """
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg[:1] in ("-", "+"):
            return argv[:i], argv[i:]
    return argv, []


def iter_cmd_options(args: Sequence[str]) -> Iterable[tuple[str, str, str]]:
    """Yields ``(key, value, written_as)`` per option, in command-line order.

    ``key`` is ``"--config"`` for a config file; ``written_as`` is ``"++"`` or the option name.

    >>> [o[:2] for o in iter_cmd_options(["++lr", "0.1", "-n", "3", "--device=gpu", "-v5", "--config", "x"])]
    [('lr', '0.1'), ('num_epochs', '3'), ('device', 'gpu'), ('log_verbosity', '5'), ('--config', 'x')]
    """
    args = list(args)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("++"):
            key = arg[2:]
            if not key:
                raise ConfigError("command line: '++' needs a key and a value (++key value)")
            if i + 1 >= len(args) or args[i + 1].startswith("++"):
                raise ConfigError(f"command line: {arg!r} needs a value (++{key} value)")
            value = args[i + 1]
            if value[:2] == "+-":  # so that "++threshold +-0.1" can say -0.1
                value = value[1:]
            yield key, value, "++"
            i += 2
            continue
        name, inline = arg, None
        if arg.startswith("--") and "=" in arg:
            name, inline = arg.split("=", 1)
        elif arg.startswith("-") and not arg.startswith("--") and len(arg) > 2:
            name, inline = arg[:2], arg[2:]  # -n5, like optparse
        if name != "--config" and name not in OPTION_KEYS:
            if not arg.startswith("-"):
                raise ConfigError(
                    f"command line: unexpected argument {arg!r} (config files come first, then ++key value options)"
                )
            known = ", ".join(sorted({o for o in OPTION_KEYS if o.startswith("--")} | {"--config"}))
            raise ConfigError(f"command line: unknown option {name!r} (known: ++key value, {known})")
        if inline is None:
            if i + 1 >= len(args):
                raise ConfigError(f"command line: option {name!r} needs a value")
            inline = args[i + 1]
            i += 1
        i += 1
        yield (name if name == "--config" else OPTION_KEYS[name]), inline, name

"""A tiny config mechanism: a nested defaults table, YAML files over it, then ``--section.key value`` overrides.

Every key must already exist in the defaults table, so a typo stops the run with the list of accepted keys instead of
being silently ignored. Values are parsed as YAML (``0.1``, ``true``, ``[0.0, 0.999]``) and checked against the type of
the default and against the optional ``choices`` and ``checks`` tables of the caller.
"""
import contextlib
import copy
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml


class ConfigError(ValueError):
    """A bad config file, key or value; the message says what is accepted."""


class Config(dict):
    """A nested dict whose keys can also be read as attributes (``cfg.train.batch_size``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __deepcopy__(self, memo):
        return Config({key: copy.deepcopy(value, memo) for key, value in self.items()})

    def to_dict(self) -> dict:
        return {key: value.to_dict() if isinstance(value, Config) else value for key, value in self.items()}


def as_config(tree: Mapping) -> Config:
    return Config({key: as_config(value) if isinstance(value, Mapping) else value for key, value in tree.items()})


def _coerce(path: str, value: Any, default: Any) -> Any:
    """Fit ``value`` to the type of ``default``; None defaults accept anything."""
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            with contextlib.suppress(ValueError):
                return float(value)
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif isinstance(default, (list, tuple)):
        if isinstance(value, (list, tuple)):
            return list(value)
    raise ConfigError(f"bad value for '{path}': {value!r} (expected {type(default).__name__}, like the default {default!r})")


def _merge(base: Config, update: Mapping, prefix: str = "") -> None:
    for key, value in update.items():
        key = str(key).replace("-", "_")
        path = f"{prefix}{key}"
        if key not in base:
            accepted = ", ".join(sorted(base))
            raise ConfigError(f"unknown config key '{path}'; accepted keys{' in ' + prefix[:-1] if prefix else ''}: {accepted}")
        if isinstance(base[key], Config):
            if not isinstance(value, Mapping):
                raise ConfigError(f"'{path}' is a section (keys: {', '.join(sorted(base[key]))}), not a value")
            _merge(base[key], value, path + ".")
        else:
            base[key] = _coerce(path, value, base[key])


def _nest(path: str, value: Any) -> dict:
    tree: dict = {}
    node = tree
    parts = path.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return tree


def parse_overrides(argv: Sequence[str], aliases: Mapping[str, str] = ()) -> tuple[list[str], list[tuple[str, Any]]]:
    """Split ``--config FILE`` (repeatable) from ``--key value`` / ``--key=value`` pairs; a bare ``--flag`` means true."""
    aliases = dict(aliases)
    files, overrides = [], []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; options look like --section.key value")
        name, has_value, value = arg[2:].partition("=")
        if not has_value:
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                value, i = args[i + 1], i + 1
            else:
                value = "true"
        i += 1
        name = aliases.get(name, name)
        if name == "config":
            files.append(value)
        else:
            overrides.append((name.replace("-", "_"), yaml.safe_load(value) if value != "" else None))
    return files, overrides


def load_config(
    defaults: Mapping,
    argv: Sequence[str] = (),
    aliases: Mapping[str, str] = (),
    choices: Mapping[str, Sequence] = (),
    checks: Mapping[str, tuple[Callable[[Any], bool], str]] = (),
    base_files: Sequence[str] = (),
) -> Config:
    """Defaults, then ``base_files`` and ``--config`` files in order, then command-line overrides; validated."""
    cfg = as_config(copy.deepcopy(dict(defaults)))
    files, overrides = parse_overrides(argv, aliases)
    for file in [*base_files, *files]:
        path = Path(file)
        if not path.is_file():
            raise ConfigError(f"config file not found: {file} (pass an existing YAML file to --config)")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {file} is not valid YAML: {error}".splitlines()[0]) from None
        if not isinstance(tree, Mapping):
            raise ConfigError(f"config file {file} must hold a mapping of sections, not {type(tree).__name__}")
        _merge(cfg, tree)
    for path, value in overrides:
        _merge(cfg, _nest(path, value))
    validate(cfg, choices, checks)
    return cfg


def get(cfg: Config, path: str) -> Any:
    node = cfg
    for part in path.split("."):
        node = node[part]
    return node


def validate(cfg: Config, choices: Mapping[str, Sequence] = (), checks: Mapping = ()) -> None:
    for path, allowed in dict(choices).items():
        value = get(cfg, path)
        if value not in allowed:
            raise ConfigError(f"bad value for '{path}': {value!r}; accepted: {', '.join(map(str, allowed))}")
    for path, (check, expected) in dict(checks).items():
        value = get(cfg, path)
        if not check(value):
            raise ConfigError(f"bad value for '{path}': {value!r} (expected {expected})")


def split_resume(argv: Sequence[str]) -> tuple[list[str], Path | None]:
    """Take ``--resume RUN_DIR`` out of ``argv``: the run's saved ``config.yaml`` becomes the base config."""
    argv = list(argv)
    if "--resume" not in argv:
        return argv, None
    at = argv.index("--resume")
    if at + 1 >= len(argv):
        raise ConfigError("--resume needs a run directory (one holding config.yaml and checkpoints/)")
    resume = Path(argv[at + 1])
    del argv[at : at + 2]
    if not (resume / "config.yaml").is_file():
        raise ConfigError(f"cannot resume: {resume / 'config.yaml'} not found (is {resume} a genkd run directory?)")
    return argv, resume


def config_and_resume(argv: Sequence[str], build_config: Callable[..., Config]) -> tuple[Config, Path | None]:
    """``build_config(argv, base_files=...)``, on top of the saved config of the run that ``--resume`` names."""
    argv, resume = split_resume(argv)
    if resume is None:
        return build_config(argv), None
    cfg = build_config(argv, base_files=[resume / "config.yaml"])
    cfg.run_dir = str(resume)
    return cfg, resume


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


# ---------------------------------------------------------------- --help, generated from the defaults table
#
# The explanation of every key is the ``# comment`` written after it in its defaults table (genkd/defaults.py,
# genkd/train_classifier.py): that table stays the one place where a key, its default and its meaning are written, and
# --help reads the comments back from the module's source with ``tokenize`` (a block of comment lines just above a key
# counts too, as for the classifier's per-method sections). Types, defaults, choices and checks come from the live
# tables themselves.

HELP_FLAGS = ("--help", "-h")


def wants_help(argv: Sequence[str]) -> bool:
    return any(arg in HELP_FLAGS for arg in argv)


def source_comments(module: str, variable: str = "DEFAULTS", prefix: str = "") -> dict[str, str]:
    """``{"section.key": comment}`` of the dict literal assigned to ``variable`` at the top level of ``module``."""
    import ast
    import importlib.util
    import io
    import tokenize

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        return {}
    trailing, standalone, code = {}, {}, []
    for token in tokenize.generate_tokens(io.StringIO(Path(spec.origin).read_text()).readline):
        if token.type == tokenize.COMMENT:
            text = token.string.lstrip("#").strip()
            (standalone if token.line.lstrip().startswith("#") else trailing)[token.start[0]] = text
        elif token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            code.append(token)
    start = next(
        (i for i in range(len(code) - 2) if code[i].string == variable and code[i].start[1] == 0
         and code[i + 1].string == "=" and code[i + 2].string == "{"),
        None,
    )  # fmt: skip
    comments: dict[str, str] = {}
    if start is None:
        return comments
    brackets: list[str | None] = []  # per open bracket: the path of the key whose value it opens (None: no key)
    key, lines_with_a_key = None, set()
    for index in range(start + 2, len(code)):
        token = code[index]
        if token.type == tokenize.OP and token.string in "{[(":
            brackets.append(key if token.string == "{" and code[index - 1].string == ":" else None)
        elif token.type == tokenize.OP and token.string in "}])":
            brackets.pop()
            if not brackets:
                break
        elif (
            token.type == tokenize.STRING
            and code[index + 1].string == ":"
            and code[index - 1].string in ("{", ",")
            and all(path is not None for path in brackets[1:])
        ):
            parent = brackets[-1] if len(brackets) > 1 else None
            key = f"{parent}.{ast.literal_eval(token.string)}" if parent else prefix + ast.literal_eval(token.string)
            line = token.start[0]
            if line in lines_with_a_key:  # a comment explains the first key of its line
                continue
            lines_with_a_key.add(line)
            above = []
            while line - 1 - len(above) in standalone:
                above.insert(0, standalone[line - 1 - len(above)])
            if line in trailing or above:
                comments[key] = trailing.get(line) or " ".join(above)
    return comments


def _leaves(tree: Mapping, prefix: str = ""):
    for name, value in tree.items():
        if isinstance(value, Mapping):
            yield from _leaves(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value


def _type_name(default: Any) -> str:
    if default is None:
        return "VALUE"
    if isinstance(default, (list, tuple)):
        return "LIST"
    return {bool: "BOOL", int: "INT", float: "FLOAT", str: "STR"}.get(type(default), type(default).__name__.upper())


def help_text(
    usage: str,
    defaults: Mapping,
    comments: Mapping[str, str] = (),
    choices: Mapping[str, Sequence] = (),
    checks: Mapping[str, tuple[Callable[[Any], bool], str]] = (),
    aliases: Mapping[str, str] = (),
) -> str:
    """The --help page: ``usage``, then one entry per key of ``defaults`` (type, default, comment, choices, range)."""
    comments, choices, checks = dict(comments), dict(choices), dict(checks)
    short = {}
    for alias, path in dict(aliases).items():
        short.setdefault(path, []).append(f"--{alias}")
    lines, section = [usage.rstrip(), "", "Options (any key of the defaults table; in a --config YAML file too):"], None
    for path, default in _leaves(defaults):
        head = path.rpartition(".")[0]
        if head != section and head:
            section = head
            lines.append(f"\n  [{head}]" + (f"  {comments[head]}" if head in comments else ""))
        flag = "--" + path.replace("_", "-")
        also = f" (or {', '.join(short[path])})" if path in short else ""
        lines.append(f"  {flag} {_type_name(default)}{also}  default: {default!r}")
        notes = [comments.get(path, "")]
        if path in choices:
            notes.append("accepted: " + ", ".join(map(str, choices[path])))
        if path in checks:
            notes.append("expected: " + checks[path][1])
        lines.extend(f"      {note}" for note in notes if note)
    lines.append("\n  --config FILE  a YAML file of sections (repeatable; later files and then --key values win)")
    return "\n".join(lines)

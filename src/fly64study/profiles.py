"""The study's profiles, each written once: ``profiles/default.yaml`` holds every parameter with its
meaning, and each other profile only the keys in which it differs, applied over it as a JSON Merge
Patch (RFC 7386: a mapping merges key by key, any other value replaces, ``null`` removes the key).

``make profile PROFILE=<name>`` writes the composition to ``params.yaml``, the one file DVC reads, so
``dvc params diff`` shows what a switch changed, after checking it as every stage will. A key's
end-of-line comment travels with it: the profile's own where it gives one, the default's otherwise
(comments on lines of their own in a profile are its notes, not carried over).

The stages never read profiles/ (this module is no dependency of theirs): a profile tool that
changes leaves every result valid.
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from fly64study.design import ParamsError, load_params
from fly64study.files import atomic_path

BASE = "default"
PROFILES = Path("profiles")  # beside params.yaml, in the repository root


class ProfileError(ValueError):
    """A profile that does not compose: the message names the profile file, the key and the fix."""


def _yaml() -> YAML:
    y = YAML()  # round trip: comments, key order and quoting as written
    y.preserve_quotes = True
    y.width = 4096  # never re-wrap a long line
    y.indent(mapping=2, sequence=4, offset=2)
    y.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    return y


def _header(text: str) -> tuple[str, str]:
    """A file's leading comment block (its description) and the rest."""
    lines = text.splitlines(keepends=True)
    n = next((i for i, line in enumerate(lines) if line.strip() and not line.startswith("#")), len(lines))
    return "".join(lines[:n]), "".join(lines[n:])


def _merge(base: CommentedMap, patch: CommentedMap, where: str, path: str = "") -> None:
    for key, value in patch.items():
        name = f"{path}{key}"
        if value is None:
            if key not in base:
                raise ProfileError(f"{where}: {name}: null removes a key, and profiles/{BASE}.yaml has no {name}; "
                                   "delete the line")
            del base[key]
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value, where, f"{name}.")
        else:
            if key not in base:
                raise ProfileError(f"{where}: {name}: not a parameter of profiles/{BASE}.yaml; add it there "
                                   "(with its meaning) first, or correct the name")
            base[key] = value
            if key in patch.ca.items:  # the profile's own comment on this key replaces the default's
                base.ca.items[key] = patch.ca.items[key]


def compose(name: str, folder: Path = PROFILES) -> str:
    """``params.yaml``'s text for profile ``name``: the profile's description, then the default
    profile with the profile's keys merged in."""
    path = Path(folder) / f"{name}.yaml"
    if not path.is_file():
        known = " ".join(sorted(p.stem for p in Path(folder).glob("*.yaml")))
        raise ProfileError(f"no profile {name!r} ({path}): choose one of {known}")
    if name == BASE:
        return path.read_text(encoding="utf-8")
    y = _yaml()
    header, body = _header(path.read_text(encoding="utf-8"))
    base_body = _header((Path(folder) / f"{BASE}.yaml").read_text(encoding="utf-8"))[1]
    description = header.split("\n\n")[0].rstrip("\n") + "\n"  # its first paragraph: what the profile is for
    written = (f"# Written by `make profile PROFILE={name}`: profiles/{name}.yaml's keys merged over profiles/{BASE}.yaml\n"
               "# (every key's meaning); `dvc params diff` shows what a switch changed.\n")
    patch = y.load(body) or CommentedMap()
    if not isinstance(patch, dict):
        raise ProfileError(f"{path}: a profile is a mapping of the keys it changes, not {type(patch).__name__}")
    data = y.load(base_body)
    _merge(data, patch, str(path))
    out = io.StringIO()
    y.dump(data, out)
    return description + written + "\n" + out.getvalue()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", help=f"a profile in profiles/ ({BASE}, tiny, quality, real, full)")
    parser.add_argument("--out", default="params.yaml", help="where to write the composed params")
    args = parser.parse_args(argv)
    try:
        text = compose(args.profile)
        with atomic_path(Path(args.out)) as tmp:
            tmp.write_text(text, encoding="utf-8")
            load_params(tmp)  # as every stage will read it; a refused profile leaves the old file in place
    except (ProfileError, ParamsError) as err:
        print(f"error: profiles/{args.profile}.yaml: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

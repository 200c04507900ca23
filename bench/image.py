"""The container image, measured: its size, the sidecar's memory in it, the gate's cost in it.

Run by `scripts/image-smoke.sh --measure` while its sidecar container is confirmed (the gate
open, the instance passing in the catalog), with podman pointed at the smoke test's store:

    python3 bench/image.py --container NAME --image IMAGE --base BASE --scratch DIR --out bench/out

- Size: uncompressed as podman stores it (`podman image inspect`), compressed as a registry
  stores it (the gzip layer blobs of `podman push --compression-format gzip` to an OCI
  layout, plus config and manifest). The base image and the part the Dockerfile adds on top of
  it are reported apart: only the latter is ours; a `python:3.12-slim` base differs.
- Memory: VmRSS (and its anonymous/file split) of the container's PID 1, the sidecar, sampled
  every second; also the container cgroup's working set (usage minus inactive file cache,
  what the kubelet and `kubectl top` report) where the memory cgroup is readable.
- Gate: this file is also the in-container half. Piped into the container's own Python
  (`podman exec -i CONTAINER python - --inside`), it runs `readiness-gate` (found on PATH,
  whatever its shebang says) and a bare start of the same interpreter alternately, as the
  container's user, and takes each child's CPU time from wait4(). Several rounds, so the
  spread shows.

Standard library only (the host half runs with any python3; the other half in the image).
Prints a markdown table and writes `image.json` and `image.md` into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MS = 1000.0
MB = 1_000_000  # image sizes in MB (10^6), as registries and `podman images` show them
MIB = 1024 * 1024  # memory in MiB, as /proc shows kB of 1024 bytes


# -- inside the container ------------------------------------------------------------------------


def interpreter_of(script: str) -> tuple[str, list[str]]:
    """The interpreter and flags a script's `#!` line runs it with (`env` and `env -S` seen through)."""
    with open(script, "rb") as handle:
        first = handle.readline().decode(errors="replace").strip()
    words = first[2:].split() if first.startswith("#!") else []
    if words and os.path.basename(words[0]) == "env":
        words = words[1:]
        if words and words[0] in ("-S", "--split-string"):  # env's own option, not the interpreter's
            words = words[1:]
    if not words:
        return sys.executable, []
    return shutil.which(words[0]) or words[0], words[1:]


def run_once(argv: list[str]) -> tuple[float, float, int]:
    """Wall and CPU (user + system) milliseconds of one child, and its exit code."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = (time.perf_counter() - started) * MS
    return wall, (usage.ru_utime + usage.ru_stime) * MS, os.waitstatus_to_exitcode(status)


def inside(rounds: int, samples: int, warmup: int) -> dict[str, Any]:
    gate = shutil.which("readiness-gate")
    if gate is None:
        raise SystemExit("readiness-gate is not on PATH in the image")
    interpreter, flags = interpreter_of(gate)
    argvs = {"gate": [gate], "bare": [interpreter, "-c", "pass"]}
    if flags:  # the same interpreter with the gate's own flags (e.g. -S), as a second baseline
        argvs["bare_with_gate_flags"] = [interpreter, *flags, "-c", "pass"]
    per_round: list[dict[str, Any]] = []
    codes: set[int] = set()
    for _ in range(rounds):
        wall: dict[str, list[float]] = {k: [] for k in argvs}
        cpu: dict[str, list[float]] = {k: [] for k in argvs}
        for i in range(warmup + samples):
            order = list(argvs) if i % 2 else list(reversed(argvs))  # alternate: load drift hits both
            for kind in order:
                w, c, code = run_once(argvs[kind])
                if i >= warmup:
                    wall[kind].append(w)
                    cpu[kind].append(c)
                    if kind == "gate":
                        codes.add(code)
        per_round.append({f"{k}_{what}_ms": statistics.median(v) for k in argvs
                          for what, v in (("cpu", cpu[k]), ("wall", wall[k]))})
    with open(gate, "rb") as handle:
        shebang = handle.readline().decode(errors="replace").strip()
    return {"gate": gate, "shebang": shebang, "argv": argvs, "python": sys.version.split()[0],
            "uid": os.getuid(), "rounds": rounds, "samples_per_round": samples,
            "gate_exit_codes": sorted(codes), "per_round": per_round}


# -- on the host ---------------------------------------------------------------------------------


def podman(*args: str, timeout: float = 300) -> str:
    return subprocess.run(["podman", *args], check=True, capture_output=True, text=True, timeout=timeout).stdout


def image_sizes(image: str, base: str, scratch: Path) -> dict[str, Any]:
    inspected = {name: json.loads(podman("image", "inspect", name))[0] for name in (image, base)}
    layout = Path(tempfile.mkdtemp(prefix="oci-", dir=scratch))
    try:
        podman("push", "--quiet", "--compression-format", "gzip", image, f"oci:{layout}:measured", timeout=600)
        blobs = layout / "blobs" / "sha256"
        index = json.loads((layout / "index.json").read_text())
        manifest_digest = index["manifests"][0]["digest"].split(":", 1)[1]
        manifest = json.loads((blobs / manifest_digest).read_text())
        layers = [int(layer["size"]) for layer in manifest["layers"]]
        compressed = sum(layers) + int(manifest["config"]["size"]) + (blobs / manifest_digest).stat().st_size
    finally:
        shutil.rmtree(layout, ignore_errors=True)
    base_layers = len(inspected[base]["RootFS"]["Layers"])
    return {
        "image_bytes": int(inspected[image]["Size"]),
        "base_bytes": int(inspected[base]["Size"]),
        "added_bytes": int(inspected[image]["Size"]) - int(inspected[base]["Size"]),
        "compressed_bytes": compressed,
        "compressed_layers_bytes": layers,
        "compressed_added_bytes": sum(layers[base_layers:]),
        "user": inspected[image]["Config"].get("User", ""),
    }


def proc_status_kib(pid: int, *keys: str) -> dict[str, int]:
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in keys:
            found[key] = int(value.split()[0])
    return found


def working_set_bytes(pid: int) -> int | None:
    """The container's memory cgroup: usage minus inactive file cache (cgroup v1 or v2)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "memory":
            base, usage_file, inactive_key = Path("/sys/fs/cgroup/memory") / path.lstrip("/"), \
                "memory.usage_in_bytes", "total_inactive_file"
            break
    else:
        path = next((ln.split(":", 2)[2] for ln in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
                     if ln.startswith("0::")), "")
        base, usage_file, inactive_key = Path("/sys/fs/cgroup") / path.lstrip("/"), "memory.current", "inactive_file"
    try:
        usage = int((base / usage_file).read_text())
        stat = dict(line.split() for line in (base / "memory.stat").read_text().splitlines())
        return usage - int(stat[inactive_key])
    except (OSError, KeyError, ValueError):
        return None


def memory(container: str, samples: int, interval: float) -> dict[str, Any]:
    pid = int(podman("inspect", "--format", "{{.State.Pid}}", container).strip())
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    rss: list[float] = []
    anon: list[float] = []
    working: list[float] = []
    for i in range(samples):
        if i:
            time.sleep(interval)
        status = proc_status_kib(pid, "VmRSS", "RssAnon", "RssFile")
        rss.append(status["VmRSS"] / 1024)
        anon.append(status.get("RssAnon", 0) / 1024)
        ws = working_set_bytes(pid)
        if ws is not None:
            working.append(ws / MIB)
    return {"pid_on_host": pid, "cmdline": cmdline, "samples": samples, "interval_s": interval,
            "rss_mib": rss, "rss_anon_mib": anon, "working_set_mib": working}


def gate_cost(container: str, rounds: int, samples: int, warmup: int) -> dict[str, Any]:
    source = Path(__file__).read_text()
    done = subprocess.run(["podman", "exec", "-i", container, "python", "-", "--inside", "--rounds", str(rounds),
                           "--samples", str(samples), "--warmup", str(warmup)],
                          input=source, capture_output=True, text=True, check=False, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"the in-container measurement failed ({done.returncode}):\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def spread(values: list[float], unit: str, digits: int = 1) -> str:
    return (f"median {statistics.median(values):.{digits}f} {unit} (min {min(values):.{digits}f}, "
            f"max {max(values):.{digits}f}, n={len(values)})")


def table(result: dict[str, Any]) -> str:
    size, mem, gate = result["size"], result["memory"], result["gate"]
    rounds = gate["per_round"]

    def ratio(kind: str, base: str, what: str) -> list[float]:
        return [r[f"{kind}_{what}_ms"] / r[f"{base}_{what}_ms"] for r in rounds]

    rows = [
        ("image size, uncompressed (`podman image inspect`)", f"{size['image_bytes'] / MB:.1f} MB",
         f"base {size['base_bytes'] / MB:.1f} MB + {size['added_bytes'] / MB:.1f} MB added by the Dockerfile"),
        ("image size, compressed (gzip layers, as pushed)", f"{size['compressed_bytes'] / MB:.1f} MB",
         f"of which {size['compressed_added_bytes'] / MB:.1f} MB added by the Dockerfile"),
        ("sidecar RSS in the container (VmRSS of PID 1)", f"{max(mem['rss_mib']):.1f} MiB max",
         f"{spread(mem['rss_mib'], 'MiB')}; anonymous {statistics.median(mem['rss_anon_mib']):.1f} MiB"),
    ]
    if mem["working_set_mib"]:
        rows.append(("container working set (cgroup usage - inactive file)",
                     f"{statistics.median(mem['working_set_mib']):.1f} MiB", spread(mem["working_set_mib"], "MiB")))
    gate_cpu = [r["gate_cpu_ms"] for r in rounds]
    bare_cpu = [r["bare_cpu_ms"] for r in rounds]
    rows += [
        ("readiness-gate CPU per run in the container", f"{statistics.median(gate_cpu):.1f} ms",
         f"round medians {', '.join(f'{v:.1f}' for v in gate_cpu)}"),
        ("bare start of the gate's interpreter (`<interpreter> -c pass`) CPU per run in the container", f"{statistics.median(bare_cpu):.1f} ms",
         f"round medians {', '.join(f'{v:.1f}' for v in bare_cpu)}"),
        ("readiness-gate / bare interpreter, CPU", f"{statistics.median(ratio('gate', 'bare', 'cpu')):.2f}x",
         f"per round {', '.join(f'{v:.2f}' for v in ratio('gate', 'bare', 'cpu'))}"),
        ("readiness-gate / bare interpreter, wall", f"{statistics.median(ratio('gate', 'bare', 'wall')):.2f}x",
         f"gate {statistics.median(r['gate_wall_ms'] for r in rounds):.1f} ms vs bare "
         f"{statistics.median(r['bare_wall_ms'] for r in rounds):.1f} ms"),
    ]
    if "bare_with_gate_flags" in gate["argv"]:
        rows.append((f"readiness-gate / `{' '.join(gate['argv']['bare_with_gate_flags'])}`, CPU",
                     f"{statistics.median(ratio('gate', 'bare_with_gate_flags', 'cpu')):.2f}x", "same flags as the gate"))
    lines = ["| figure | measured | spread / detail |", "|---|---|---|"]
    lines += [f"| {name} | {value} | {detail} |" for name, value, detail in rows]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inside", action="store_true", help="the in-container half (gate timing)")
    parser.add_argument("--container")
    parser.add_argument("--image")
    parser.add_argument("--base")
    # No defaults that touch the filesystem: the --inside half runs on a read-only root.
    parser.add_argument("--scratch", type=Path, help="where the OCI layout for the compressed size goes")
    parser.add_argument("--out", type=Path, help="default: bench/out")
    parser.add_argument("--rounds", type=int, default=5, help="gate: rounds, each with its own median")
    parser.add_argument("--samples", type=int, default=40, help="gate: runs of each kind per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rss-samples", type=int, default=10)
    args = parser.parse_args()
    if args.inside:
        json.dump(inside(args.rounds, args.samples, args.warmup), sys.stdout)
        return 0
    if not (args.container and args.image and args.base):
        parser.error("--container, --image and --base are required (or --inside)")
    started = time.monotonic()
    result: dict[str, Any] = {
        "image": args.image, "base": args.base, "loadavg_start": list(os.getloadavg()),
        "nproc": os.cpu_count(), "podman": podman("--version").strip(),
        "memory": memory(args.container, args.rss_samples, 1.0),
        "gate": gate_cost(args.container, args.rounds, args.samples, args.warmup),
        "size": image_sizes(args.image, args.base, args.scratch or Path(tempfile.gettempdir())),
    }
    if result["gate"]["gate_exit_codes"] != [0]:
        raise SystemExit(f"readiness-gate did not pass while measured: exit codes {result['gate']['gate_exit_codes']}")
    result["loadavg_end"] = list(os.getloadavg())
    result["seconds"] = round(time.monotonic() - started, 1)
    markdown = table(result)
    args.out = args.out or Path(__file__).resolve().parent / "out"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "image.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "image.md").write_text(markdown)
    print(markdown)
    print(f"python {result['gate']['python']} in the image, gate shebang `{result['gate']['shebang']}`; "
          f"load average {result['loadavg_start'][0]:.1f} -> {result['loadavg_end'][0]:.1f}; "
          f"{result['seconds']} s; written to {args.out}/image.json and image.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The studio probed as an attacker and a crowd would (issue #19, "Measured"), on loopback against `python app.py` run
as a subprocess (its memory read with psutil): fuzz, load, faults and memory.

    python bench/reliability.py                      # everything -> bench/results/reliability.{json,md}
    python bench/reliability.py --fuzz sample --soak 60 --only fuzz,memory

- fuzz: every endpoint (private events too) x every probe of tests/reliability_probes.py ("sample": one per class);
  per class: tried / answered with a message / empty error / success / hang, and messages showing a server path.
- load: 4, 8 and 16 concurrent clients (each its own browser session, Gradio's queue protocol), tiny jobs across
  the tabs; every job completes or is refused with a message, each /generate result carries its own seed and
  prompt; fairness: one session's burst of jobs against another's single job; the server's peak RSS.
- faults: Stop mid-job in every tab, a client SIGKILLed mid-job, a /call whose stream is never read, a job the cost
  cap must refuse (the CPU stand-in for out-of-memory: tests/test_engine_jobs.py raises OutOfMemoryError in-process),
  a corrupt model folder at start; after each, how long the next job took.
- memory: the 12000x12000 PNG and a decompression bomb (RSS growth), and a soak of tiny jobs (RSS first/last, slope).
The server runs with --public (the Space's limits) unless --local is given.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(ROOT / "tests"))
import reliability_probes as probes  # noqa: E402  (the probes the default test sends, shared)
from app_harness import free_port  # noqa: E402

PARTS = ("fuzz", "load", "faults", "memory", "full_disk")  # the report's sections
RSS_KILL_MB = 8000  # the watchdog stops a server past this: the machine is shared
COLOURS = ("red", "blue", "green", "yellow")


# ---------------------------------------------------------------------------------------------------- the server

class Server:
    """`python app.py` on a free port, its peak RSS sampled every 50 ms (and killed past RSS_KILL_MB)."""

    def __init__(self, args: list[str], temp: Path) -> None:
        self.port = free_port()
        env = {**os.environ, "GRADIO_TEMP_DIR": str(temp), "GRADIO_ANALYTICS_ENABLED": "False"}
        self.process = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(self.port), "--device",
                                         "cpu", *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                        stderr=open(temp / "server.log", "w"))
        self.url = f"http://127.0.0.1:{self.port}/"
        self.ps = psutil.Process(self.process.pid)
        self.peak_mb, self.killed = 0.0, False
        self._watching = True
        threading.Thread(target=self._watch, daemon=True).start()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"app.py exited with {self.process.returncode}: see {temp / 'server.log'}")
            try:  # answered twice, a second apart: the first answers can come while launch() is still settling
                if httpx.get(self.url + "config", timeout=5).status_code == 200:
                    time.sleep(1.0)
                    if httpx.get(self.url + "config", timeout=5).status_code == 200:
                        return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError("app.py did not answer in 300 s")

    def rss_mb(self) -> float:
        return self.ps.memory_info().rss / 2**20

    def _watch(self) -> None:
        while self._watching and self.process.poll() is None:
            try:
                rss = self.rss_mb()
            except psutil.Error:
                return
            self.peak_mb = max(self.peak_mb, rss)
            if rss > RSS_KILL_MB:
                self.killed = True
                self.process.kill()
            time.sleep(0.05)

    def reset_peak(self) -> None:
        self.peak_mb = self.rss_mb()

    def stop(self) -> None:
        self._watching = False
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()


@contextmanager
def served(args: list[str]) -> Iterator[Server]:
    with tempfile.TemporaryDirectory(prefix="reliability-") as temp:
        server = Server(args, Path(temp))
        try:
            yield server
        finally:
            server.stop()


# ---------------------------------------------------------------------------------------------------- fuzz

def fuzz(server: Server, work: Path, full: bool, timeout: float) -> dict:
    endpoints = probes.discover(server.url)
    files, wire = probes.Files(work), probes.Wire(server.url, timeout)
    tried, dead_after = [], []
    for index, endpoint in enumerate(endpoints):
        for probe in (probes.probes_for(endpoint) if full else probes.sample(endpoint, index)):
            tried.append(probes.run_probe(probe, endpoint, files, wire, timeout))
        if endpoint.visibility != "private" or index == len(endpoints) - 1:
            alive = probes.tiny_generate(endpoints, files, wire)
            if alive.kind != "success":
                dead_after.append(f"{endpoint.api_name}: {alive.kind} {alive.text[:100]}")
    rows = [item.row() for item in tried]
    failing = [row for row in rows if row["outcome"] in probes.FAILING or row["leaks_path"]]
    return {"mode": "full" if full else "sample", "endpoints": {v: sum(e.visibility == v for e in endpoints)
                                                               for v in ("public", "undocumented", "private")},
            "classes": probes.tally(tried), "by_visibility": {v: probes.tally([t for t in tried if t.visibility == v])
                                                              for v in ("public", "undocumented", "private")},
            "failing": failing, "alive_failed_after": dead_after, "pickle_ran": files.marker.exists(),
            "tried": len(rows)}


# ---------------------------------------------------------------------------------------------------- load

def tiny_job(endpoints, files, wire, seed: int, colour: str) -> dict:
    prompt = f"a big {colour} circle on the left"
    outcome = probes.tiny_generate(endpoints, files, wire, seed=seed, prompt=prompt)
    settings = probes.settings_of(outcome.output)
    mixed = outcome.kind == "success" and (settings.get("seed") != seed or settings.get("prompt") != prompt)
    return {"kind": outcome.kind, "seconds": outcome.seconds, "mixed": mixed, "text": outcome.text[:200]}


def tab_job(endpoints, files, wire, api_name: str) -> dict:
    endpoint = probes.by_name(endpoints, api_name)
    outcome = wire.call(endpoint, probes.valid_call(endpoint, files, wire))
    return {"kind": outcome.kind, "seconds": outcome.seconds, "mixed": False, "text": outcome.text[:200]}


LOAD_TABS = ("generate", "sdedit", "structure", "p2p")  # generate's results are checked for seed and prompt


def load(server: Server, work: Path, clients: int, jobs_each: int) -> dict:
    endpoints = probes.discover(server.url)
    files = probes.Files(work)
    server.reset_peak()
    results: list[dict] = []
    lock = threading.Lock()

    def client(number: int) -> None:
        wire = probes.Wire(server.url, 300, session=uuid.uuid4().hex)
        for job in range(jobs_each):
            tab = LOAD_TABS[(number + job) % len(LOAD_TABS)]
            seed = 1000 * number + job
            row = (tiny_job(endpoints, files, wire, seed, COLOURS[seed % 4]) if tab == "generate"
                   else tab_job(endpoints, files, wire, tab))
            with lock:
                results.append({**row, "client": number, "tab": tab})
        wire.close()

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    kinds = {kind: sum(r["kind"] == kind for r in results) for kind in probes.OUTCOMES}
    done = [r["seconds"] for r in results if r["kind"] == "success"]
    return {"clients": clients, "jobs": len(results), **kinds, "mixed": sum(r["mixed"] for r in results),
            "lost": clients * jobs_each - len(results), "median_s": statistics.median(done) if done else None,
            "max_s": max(done) if done else None, "wall_s": time.monotonic() - started, "peak_rss_mb": server.peak_mb,
            "refusals": sorted({r["text"][:120] for r in results if r["kind"] == "message"})}


def fairness(server: Server, work: Path, burst: int = 4) -> dict:
    """One session submits `burst` jobs at once; another then submits one: its wait against one job's time."""
    endpoints = probes.discover(server.url)
    files = probes.Files(work)
    single_wire = probes.Wire(server.url, 300)
    alone = tiny_job(endpoints, files, single_wire, 1, "red")["seconds"]
    burst_wire = probes.Wire(server.url, 300)
    burst_results: list[dict] = []
    threads = [threading.Thread(target=lambda n=n: burst_results.append(tiny_job(endpoints, files, burst_wire, 10 + n,
                                                                                   "blue"))) for n in range(burst)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    single = tiny_job(endpoints, files, single_wire, 2, "green")
    for thread in threads:
        thread.join()
    return {"burst": burst, "one_job_s": alone, "single_while_burst_s": single["seconds"], "single": single["kind"],
            "burst_outcomes": {k: sum(r["kind"] == k for r in burst_results) for k in probes.OUTCOMES},
            "within_one_job": single["seconds"] <= 2 * alone + 1.0}


# ---------------------------------------------------------------------------------------------------- faults

STOPS = {"generate": "stop", "structure": "structure_stop", "invert": "inversion_stop", "sdedit": "sdedit_stop",
         "diffedit": "diffedit_stop", "p2p": "p2p_stop", "personalize": "personalize_stop"}
LONG = {"steps": 60, "width": 128, "height": 128}


def long_call(endpoint, files, wire) -> list:
    data = probes.valid_call(endpoint, files, wire)
    for i, param in enumerate(endpoint.params):
        if param.name in LONG:
            maximum = param.props.get("maximum")
            data[i] = min(LONG[param.name], maximum) if isinstance(maximum, (int, float)) else LONG[param.name]
    return data


def next_job(endpoints, files, server: Server) -> dict:
    return tiny_job(endpoints, files, probes.Wire(server.url, 300), 7, "yellow")


def stop_answer(outcome: probes.Outcome) -> dict:
    """A Stop call's outcome: "stopped" when its status line says where the run stopped."""
    status = re.search(r'dcs-text">([^<]*)', str(outcome.output or ""))
    said = html.unescape(status.group(1)) if status else outcome.text
    stopped = outcome.kind == "success" and said.startswith("Stopped")
    return {"kind": "stopped" if stopped else outcome.kind, "seconds": outcome.seconds, "text": said[:160]}


def faults(server: Server, work: Path) -> list[dict]:
    endpoints = probes.discover(server.url)
    files = probes.Files(work)
    rows = []
    for api_name, stop_name in STOPS.items():  # Stop mid-job, each tab
        wire = probes.Wire(server.url, 300)
        endpoint, stop = probes.by_name(endpoints, api_name), probes.by_name(endpoints, stop_name)
        session, event = wire.join(endpoint, long_call(endpoint, files, wire))
        time.sleep(2.0)
        # What the user sees is Stop's own answer (the status line: "Stopped after step k / n ..."): Gradio cancels
        # the run's task, which then sends no completion of its own (the browser drops it; so does gradio_client)
        answer = stop_answer(wire.call(stop, [None] * len(stop.params)))
        after = next_job(endpoints, files, server)
        rows.append({"fault": f"Stop mid-job: {api_name}", "outcome": answer["kind"], "seconds": answer["seconds"],
                     "text": answer["text"], "next_job": after["kind"], "next_job_s": after["seconds"]})
    rows.append(killed_client(server, endpoints, files))
    rows.append(fire_and_forget(server, endpoints, files))
    wire = probes.Wire(server.url, 300)
    costly = probes.tiny_generate(endpoints, files, wire, width=2048, height=2048, steps=150)
    after = next_job(endpoints, files, server)
    rows.append({"fault": "job over the cost cap (2048x2048, 150 steps)", "outcome": costly.kind,
                 "seconds": costly.seconds, "text": costly.text[:200], "next_job": after["kind"],
                 "next_job_s": after["seconds"]})
    return rows


KILLED_CLIENT = """
import sys, json, httpx, uuid
url, body = sys.argv[1], json.loads(sys.argv[2])
http = httpx.Client(base_url=url + "gradio_api/", timeout=300)
body["session_hash"] = uuid.uuid4().hex
http.post("queue/join", json=body)
with http.stream("GET", "queue/data", params={"session_hash": body["session_hash"]}) as stream:
    for line in stream.iter_lines():
        print(line[:80], flush=True)
"""


def killed_client(server: Server, endpoints, files) -> dict:
    endpoint = probes.by_name(endpoints, "generate")
    wire = probes.Wire(server.url, 300)
    body = {"data": long_call(endpoint, files, wire), "fn_index": endpoint.fn_index, "trigger_id": endpoint.trigger_id,
            "event_data": None}
    client = subprocess.Popen([sys.executable, "-c", KILLED_CLIENT, server.url, json.dumps(body)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(4.0)
    client.send_signal(signal.SIGKILL)
    client.wait()
    after = next_job(endpoints, files, server)
    return {"fault": "client SIGKILLed mid-job (60 steps at 128 px)", "outcome": "killed", "seconds": 4.0, "text": "",
            "next_job": after["kind"], "next_job_s": after["seconds"]}


def fire_and_forget(server: Server, endpoints, files) -> dict:
    endpoint = probes.by_name(endpoints, "generate")
    wire = probes.Wire(server.url, 300)
    data = long_call(endpoint, files, wire)
    response = httpx.post(server.url + "gradio_api/call/generate", json={"data": data}, timeout=60)
    time.sleep(1.0)
    after = next_job(endpoints, files, server)
    return {"fault": "POST /gradio_api/call/generate (60 steps), stream never read", "outcome": str(response.status_code),
            "seconds": 0.0, "text": response.text[:120], "next_job": after["kind"], "next_job_s": after["seconds"]}


def corrupt_model_start() -> dict:
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "model_index.json").write_text("{not json")
        (Path(folder) / "unet").mkdir()
        (Path(folder) / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(os.urandom(1024))
        started = time.monotonic()
        finished = subprocess.run([sys.executable, str(ROOT / "app.py"), "--model", folder, "--device", "cpu", "--port",
                                   str(free_port())], cwd=ROOT, capture_output=True, text=True, timeout=300)
    last = (finished.stderr.strip().splitlines() or [""])[-1]
    return {"fault": "corrupt model folder at start", "outcome": f"exit {finished.returncode}",
            "seconds": time.monotonic() - started, "text": last[:200].replace(folder, "<folder>"), "next_job": "-",
            "next_job_s": None}


def full_disk(work: Path, server_args: list[str]) -> dict:
    """A job whose outputs cannot be saved: the server's upload/output folder (GRADIO_TEMP_DIR) on an 8 MB tmpfs,
    filled once the app is up; then the space is freed and the next job must run. Mounting needs root."""
    mount = work / "small-disk"
    mount.mkdir()
    row = {"fault": "full disk when saving outputs (GRADIO_TEMP_DIR on a full 8 MB tmpfs)", "seconds": None, "text": "",
           "next_job": "-", "next_job_s": None}
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True).returncode:
        return {**row, "outcome": "not measured: mounting a tmpfs needs root"}
    try:
        server = Server(server_args, mount)
        try:
            endpoints, files = probes.discover(server.url), probes.Files(work)
            wire = probes.Wire(server.url, 300)
            files.upload(wire, "valid")
            filler = mount / "filler"
            with open(filler, "wb") as sink:
                try:
                    while True:
                        sink.write(bytes(1 << 16))
                        sink.flush()
                except OSError:
                    pass
            outcome = probes.tiny_generate(endpoints, files, wire)
            filler.unlink()
            after = next_job(endpoints, files, server)
        finally:
            server.stop()
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)
    return {**row, "outcome": outcome.kind, "seconds": outcome.seconds, "text": outcome.text[:200],
            "next_job": after["kind"], "next_job_s": after["seconds"]}


# ---------------------------------------------------------------------------------------------------- memory

def memory(server: Server, work: Path, soak_jobs: int) -> dict:
    endpoints = probes.discover(server.url)
    files, wire = probes.Files(work), probes.Wire(server.url, 300)
    rows = []
    for api_name in ("sdedit", "invert", "diffedit_mask"):
        endpoint = probes.by_name(endpoints, api_name)
        image = next(i for i, p in enumerate(endpoint.params) if p.kind in ("image", "imageeditor", "file"))
        for key in ("huge", "bomb"):
            files.upload(wire, key)
            time.sleep(0.5)
            before = server.rss_mb()
            server.reset_peak()
            tried = probes.run_probe(probes.Probe(key, key, image, f"file:{key}"), endpoint, files, wire, 300)
            time.sleep(0.3)
            rows.append({"input": f"{api_name} {key} ({len(files.content(key)[0]) // 1024} KB)",
                         "outcome": tried.outcome.kind, "text": tried.outcome.text[:140],
                         "rss_growth_mb": server.rss_mb() - before, "peak_growth_mb": server.peak_mb - before})
    if not soak_jobs:
        return {"uploads": rows}
    samples = []
    for job in range(soak_jobs):
        outcome = tiny_job(endpoints, files, wire, job, COLOURS[job % 4])
        if job % 10 == 0 or job == soak_jobs - 1:
            samples.append((job, server.rss_mb(), outcome["kind"]))
    jobs, rss = [s[0] for s in samples], [s[1] for s in samples]
    slope = statistics.linear_regression(jobs, rss).slope if len(samples) > 1 else 0.0
    return {"uploads": rows, "soak": {"jobs": soak_jobs, "first_mb": rss[0], "last_mb": rss[-1],
                                      "slope_mb_per_100_jobs": 100 * slope, "samples": samples,
                                      "failed": sum(s[2] != "success" for s in samples)}}


# ---------------------------------------------------------------------------------------------------- report

def markdown(report: dict) -> str:
    lines = [f"# Reliability (issue #19): fuzz, load, faults, memory", "",
             f"Commit measured: `{report['commit']}` · {report['when']} · `{report['command']}` · server: "
             f"`python app.py {' '.join(report['server_args'])}` on loopback, CPU ({os.cpu_count()} cores, shared)", ""]
    for part, source in report.get("part_sources", {}).items():
        lines += [f"Section {part} from an earlier run: `{source.get('command', '?')}`, commit `{source.get('commit', '?')}`"
                  f", {source.get('when', '?')}", ""]
    if "fuzz" in report:
        f = report["fuzz"]
        lines += [f"## Fuzz ({f['mode']}: {f['tried']} probes; endpoints {f['endpoints']})", "",
                  "| class | tried | message | empty | success | hang | path in message |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {c} | {r['tried']} | {r['message']} | {r['empty']} | {r['success']} | {r['hang']} | {r['leaks_path']} |"
                  for c, r in f["classes"].items()]
        lines += ["", f"Alive after every endpoint's probes: {'yes' if not f['alive_failed_after'] else f['alive_failed_after']}"
                  f" · a user's pickle ran: {'YES' if f['pickle_ran'] else 'no'} · failing probes: {len(f['failing'])}", ""]
        if f["failing"]:
            lines += ["| endpoint | visibility | argument | probe | outcome | text |", "|---|---|---|---|---|---|"]
            lines += [f"| {r['endpoint']} | {r['visibility']} | {r['param'][:30]} | {r['class']}/{r['variant']} | "
                      f"{r['outcome']}{' (path)' if r['leaks_path'] else ''} | {r['text'][:90].replace('|', '/')} |"
                      for r in f["failing"][:60]]
            lines.append("")
    if "load" in report:
        lines += ["## Load (tiny jobs across Generate, SDEdit, Structure, Prompt-to-Prompt)", "",
                  "| clients | jobs | completed | refused (message) | empty | hang | lost | mixed up | median s | max s | peak RSS MB |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in report["load"]["rows"]:
            lines.append(f"| {r['clients']} | {r['jobs']} | {r['success']} | {r['message']} | {r['empty']} | {r['hang']} | "
                         f"{r['lost']} | {r['mixed']} | {_n(r['median_s'])} | {_n(r['max_s'])} | {r['peak_rss_mb']:.0f} |")
        fair = report["load"]["fairness"]
        lines += ["", f"Fairness: one job alone {fair['one_job_s']:.2f} s; with another session's burst of {fair['burst']} "
                      f"queued first: {fair['single_while_burst_s']:.2f} s ({fair['single']}); burst outcomes "
                      f"{fair['burst_outcomes']}; within one job's time: {'yes' if fair['within_one_job'] else 'NO'}", ""]
        refusals = sorted({t for r in report["load"]["rows"] for t in r["refusals"]})
        lines += [f"Refusal messages: {'; '.join(refusals) if refusals else 'none'}", ""]
    if "faults" in report:
        lines += ["## Faults", "", "| fault | outcome | s | message | next job | next job s |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['fault']} | {r['outcome']} | {_n(r['seconds'])} | {r['text'][:110].replace('|', '/')} | "
                  f"{r['next_job']} | {_n(r['next_job_s'])} |" for r in report["faults"]]
        lines += ["", "Out of memory: not provoked on this CPU; the cost cap's refusal stands in (tests/test_engine_jobs.py "
                      "raises OutOfMemoryError in-process).", ""]
    if "full_disk" in report:
        r = report["full_disk"]
        lines += ["## Full disk", "", "| fault | outcome | s | message | next job | next job s |", "|---|---|---|---|---|---|",
                  f"| {r['fault']} | {r['outcome']} | {_n(r['seconds'])} | {r['text'][:110].replace('|', '/')} | "
                  f"{r['next_job']} | {_n(r['next_job_s'])} |", ""]
    if "memory" in report:
        m = report["memory"]
        lines += ["## Memory", "", "| input | outcome | RSS growth MB | peak growth MB | message |", "|---|---|---|---|---|"]
        lines += [f"| {r['input']} | {r['outcome']} | {r['rss_growth_mb']:.1f} | {r['peak_growth_mb']:.1f} | "
                  f"{r['text'][:100].replace('|', '/')} |" for r in m["uploads"]]
        s = m.get("soak")
        lines += [] if s is None else ["", f"Soak: {s['jobs']} tiny jobs, RSS {s['first_mb']:.0f} MB first -> {s['last_mb']:.0f} MB last, "
                      f"slope {s['slope_mb_per_100_jobs']:.1f} MB per 100 jobs; failed samples {s['failed']}", ""]
    return "\n".join(lines)


def _n(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="fuzz,load,faults,memory,disk")
    parser.add_argument("--fuzz", choices=["full", "sample"], default="full")
    parser.add_argument("--clients", default="4,8,16")
    parser.add_argument("--jobs-each", type=int, default=2)
    parser.add_argument("--soak", type=int, default=200)
    parser.add_argument("--local", action="store_true", help="the local app's limits instead of --public's")
    parser.add_argument("--probe-timeout", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    parts = set(args.only.split(","))
    server_args = [] if args.local else ["--public"]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    report: dict[str, Any] = {"commit": commit + (" + uncommitted changes" if dirty else ""),
                              "when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                              "command": "python bench/reliability.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                              "server_args": server_args}
    with tempfile.TemporaryDirectory() as work_dir:
        work = Path(work_dir)
        with served(server_args) if parts & {"fuzz", "memory", "load", "faults"} else nullcontext() as server:
            if "fuzz" in parts:
                report["fuzz"] = fuzz(server, work, args.fuzz == "full", args.probe_timeout)
                print("fuzz", json.dumps(report["fuzz"]), flush=True)
            if "memory" in parts:
                report["memory"] = memory(server, work, args.soak)
                print("memory", json.dumps(report["memory"]), flush=True)
            if "load" in parts:
                rows = [load(server, work, int(n), args.jobs_each) for n in args.clients.split(",")]
                report["load"] = {"rows": rows, "fairness": fairness(server, work)}
                print("load", json.dumps(report["load"]), flush=True)
            if "faults" in parts:
                report["faults"] = faults(server, work)
                print("faults", json.dumps(report["faults"]), flush=True)
            report["server_killed_by_watchdog"] = server is not None and server.killed
        if "faults" in parts:
            report["faults"].append(corrupt_model_start())
        if "disk" in parts:
            report["full_disk"] = full_disk(work, server_args)
    args.out.mkdir(parents=True, exist_ok=True)
    previous = args.out / "reliability.json"
    if previous.is_file():  # --only reruns some parts: the others stay as they were measured (and say when)
        earlier = json.loads(previous.read_text())
        kept = {key: value for key, value in earlier.items() if key in PARTS and key not in report}
        if kept:
            # where each kept part was measured: its own record, else the run that wrote the earlier report
            source = {key: earlier.get(key) for key in ("commit", "command", "when")}
            sources = {part: earlier.get("part_sources", {}).get(part, source) for part in kept}
            report = {**report, **kept, "kept_from_earlier_run": sorted(kept), "part_sources": sources}
    (args.out / "reliability.json").write_text(json.dumps(report, indent=1, default=str))
    (args.out / "reliability.md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()

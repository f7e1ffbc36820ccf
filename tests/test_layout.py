"""The package's shape (docs/architecture.md): no import circles between modules, and imports that run one
way between the layers: commands above the pipeline, the pipeline above reporting, reporting above the demo
models, those above the baselines, the baselines above evaluation, evaluation above the method, the method
above models and data, and everything above util. Function-level (lazy) imports count too: a lazy import
hides a circle from Python, not from a reader."""
import ast
import re
from pathlib import Path

ELUDE = Path(__file__).resolve().parents[1] / "elude"
# top to bottom; a module may import its own layer (without circles) and the layers below it
LAYERS = ["elude", "pipeline", "reporting", "demo", "baselines", "evaluation", "method", "models", "util"]


def module_name(path: Path) -> str:
    parts = path.relative_to(ELUDE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in ELUDE.rglob("*.py")}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The elude modules that module ``name`` imports anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            for a in node.names:  # `from package import module` imports the module
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else 0


def test_every_module_belongs_to_a_layer():
    strays = [m for m in modules() if m.count(".") >= 1 and m.split(".")[1] not in LAYERS
              and m not in ("elude.steer", "elude.housekeeping", "elude.doctor")]
    assert not strays, f"modules outside the layers of docs/architecture.md: {strays}"


def test_no_import_circles():
    g = graph()
    state, stack, circles = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(g[m]):
            if state.get(n) == "open":
                circles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(g):
        if m not in state:
            visit(m)
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_imports_run_down_the_layers():
    upward = [f"{m} (layer {LAYERS[layer(m)]}) imports {n} (layer {LAYERS[layer(n)]})"
              for m, targets in graph().items() for n in sorted(targets) if layer(n) < layer(m)]
    assert not upward, "imports that run up the layers:\n" + "\n".join(upward)


def test_the_layout_test_sees_real_imports():
    """The checks above read the code: a known edge of each kind is found (a test that could not fail
    otherwise would pass on a parser that finds nothing)."""
    g = graph()
    assert "elude.method.layers" in g["elude.pipeline.stages.chain"]  # relative, module level
    assert "elude.models.backbones" in g["elude.method.layers"]
    assert "elude.evaluation.labels" in g["elude.demo.clip"]  # lazy, inside a function
    assert "elude.method._exact_hdbscan" in g["elude.method.clustering"]


def test_the_readme_uses_only_the_public_api():
    """The README's Python snippets import from ``elude`` itself and use names it exports."""

    import elude

    readme = (ELUDE.parent / "README.md").read_text()
    code = "\n".join(re.findall(r"```python\n(.*?)```", readme, flags=re.S))
    assert "import elude" in code
    assert not re.findall(r"from elude\.\w+", code), "the README imports past the public API"
    used = set(re.findall(r"\belude\.(\w+)", code))
    assert used and used <= set(elude.__all__), f"not exported by elude: {used - set(elude.__all__)}"
    for name in elude.__all__:  # every exported name resolves
        assert getattr(elude, name) is not None


def test_building_the_dag_of_a_plain_run_imports_no_torch():
    """What rules/common.smk calls while Snakemake builds the DAG (config, ids, checks, memory requests, the
    run's alias) imports no torch for a run without labels, judges or baselines (the tiny test config): every
    snakemake invocation, and every SLURM job step, would pay ~1.5 s for it. Nor do the jobs that only read
    other artifacts' metrics (eq. 9's selection, LLM Rank's table, Table 7, the EF axis) before they run."""
    import subprocess
    import sys

    code = """
import sys, yaml
sys.path.insert(0, 'tests')
from workflow_helpers import TINY
from elude.evaluation.judges import judge_name
from elude.pipeline import checks, resources
from elude.pipeline.artifacts import record_run
from elude.pipeline.config import merge_config, validate_config
from elude.pipeline.input_keys import qualified
from elude.pipeline.plan import registry, run_artifacts, n_shards
from elude.pipeline.stages.reporting import publish_run
from elude.pipeline.stages import run_logged, Stage  # what every job imports, and the light jobs' own stages:
from elude.pipeline.stages.baselines import baseline_select  # eq. 9
from elude.pipeline.stages.judging import rank
from elude.pipeline.stages.studies import ablation, ef_search_step, ef_sweep
config = validate_config(merge_config(yaml.safe_load(open('config.yaml')), TINY))
checks.dependencies(config)
reg = registry(run_artifacts(config))
checks.preflight(config, True)
resources.shard_job_mb(config['cluster'], 300, '/nonexistent', 'float16', False)
resources.evaluate_job_mb(config['evaluate'], '/nonexistent', merge_dir='/nonexistent')
assert reg['merge'], reg
print('torch' in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ELUDE.parent, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "False", "the DAG's code imports torch"


# Runs a command's Python entry point with torch made unimportable, naming where it was asked for.
WITHOUT_TORCH = """
import runpy, sys, traceback
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            print("TORCH IMPORTED:", [f for f in traceback.format_stack() if "/elude/" in f or "/rules/" in f],
                  file=sys.stderr)
            raise ImportError("torch")
sys.meta_path.insert(0, NoTorch())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_snakemake_plans_the_demo_and_a_users_config_without_torch(tmp_path):
    """The same through Snakemake itself, for configs with every study (the demo: labels, judges, baselines,
    Tables 4, 5 and 7) and a user's (the template, filled in): its dry run, like every SLURM job step, reads the
    config, checks it and plans every artifact without torch (with it: 5.0 s instead of 1.4 s for the demo)."""
    import subprocess
    import sys

    from workflow_helpers import SNAKEMAKE

    for configfile in ([], ["--configfile", str(ELUDE.parent / "configs/template.yaml")]):
        proc = subprocess.run([sys.executable, "-c", WITHOUT_TORCH, str(SNAKEMAKE), "--dry-run", "--snakefile",
                               str(ELUDE.parent / "Snakefile"), "--directory", str(tmp_path), "--profile",
                               str(ELUDE.parent / "profiles/local"), *configfile],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0 and "TORCH IMPORTED" not in proc.stderr, proc.stderr[-3000:]
        assert re.search(r"^merge\s+\d+$", proc.stdout + proc.stderr, flags=re.M)  # it planned the run


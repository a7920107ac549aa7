import subprocess
import sys
import textwrap


def test_every_lambda_functions_module_imports_with_dagster_absent():
    """lambda_functions is the Lambda deployment package: it may use dagster_pipes, never dagster."""
    script = textwrap.dedent(
        """
        import importlib, pkgutil, sys

        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("dagster", "dagster_aws", "dagster_shared"):
                    raise ImportError(f"blocked: {name}")

        sys.meta_path.insert(0, Blocker())
        import lambda_functions
        names = [m.name for m in pkgutil.walk_packages(lambda_functions.__path__, "lambda_functions.")]
        for name in names:
            importlib.import_module(name)
        print(len(names))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 10  # every module was walked, handlers included

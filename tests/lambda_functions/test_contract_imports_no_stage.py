import subprocess
import sys
import textwrap


def test_the_contract_and_the_registry_import_no_stage():
    """The contract sits under every stage: importing it (or the function registry) loads none."""
    script = textwrap.dedent(
        """
        import sys
        import lambda_functions.contracts, lambda_functions.registry
        stages = ("cdc_capture", "merge", "warehouse_load")
        print(sorted(m for m in sys.modules if m.split(".")[0] == "lambda_functions" and m.split(".")[1:2] and m.split(".")[1] in stages))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"

"""A bad setting or policy file stops start-up with a message naming the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from escrow.errors import ConfigurationError
from escrow.settings import PROJECT_ROOT, load_policies, load_settings

GOOD = (PROJECT_ROOT / "config" / "policies.toml").read_text()


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "policies.toml").write_text(text)
    return tmp_path


class TestPolicies:
    def test_shipped_policies_load(self) -> None:
        """config/policies.toml is valid and has a default jurisdiction."""
        policies = load_policies(PROJECT_ROOT / "config" / "policies.toml")
        assert policies.for_jurisdiction("nowhere") == policies.jurisdictions[policies.default_jurisdiction]
        assert policies.jurisdictions["EU"].claim_window_days == 14

    @pytest.mark.parametrize(
        ("broken", "named"),
        [
            (
                GOOD.replace("claim_window_days = 14         #", "claim_window_days = -1         #", 1),
                "jurisdictions.EU.claim_window_days",
            ),
            (
                GOOD.replace('waterfall_mode = "pro_rata"    #', 'waterfall_mode = "random"    #', 1),
                "jurisdictions.EU.waterfall_mode",
            ),
            (GOOD.replace("EUR = 50000,", "EUX = 50000,", 1), "jurisdictions.EU.approval_threshold"),
            (
                GOOD.replace("freeze_at_strikes = 4", "freeze_at_strike = 4", 1),
                "jurisdictions.EU.strikes.freeze_at_strike",
            ),
            (GOOD.replace('default_jurisdiction = "EU"', 'default_jurisdiction = "XX"'), "default_jurisdiction"),
        ],
    )
    def test_bad_field_is_named(self, tmp_path: Path, broken: str, named: str) -> None:
        """Each kind of mistake is reported with the dotted path of the field."""
        assert broken != GOOD
        with pytest.raises(ConfigurationError) as err:
            load_policies(write(tmp_path, broken) / "policies.toml")
        assert named in err.value.detail or "default_jurisdiction" in err.value.detail

    def test_invalid_toml_names_the_file(self, tmp_path: Path) -> None:
        """A syntax error names the file."""
        with pytest.raises(ConfigurationError) as err:
            load_policies(write(tmp_path, "default_jurisdiction = ") / "policies.toml")
        assert "policies.toml" in err.value.detail


class TestSettings:
    def test_bad_environment_value_names_the_variable(self) -> None:
        """A malformed ESCROW_* value is reported under the variable's own name."""
        with pytest.raises(ConfigurationError) as err:
            load_settings(database_url="mysql://x")
        assert "ESCROW_DATABASE_URL" in err.value.detail

    def test_cli_refuses_to_start(self, tmp_path: Path) -> None:
        """`escrow migrate` with a broken policy file exits 2 and names the field."""
        write(tmp_path, GOOD.replace("hold_max_days = 90 ", "hold_max_days = 0 ", 1))
        env = {"ESCROW_CONFIG_DIR": str(tmp_path), "ESCROW_DATABASE_URL": f"sqlite:///{tmp_path}/x.db", "PATH": ""}
        result = subprocess.run(
            [sys.executable, "-m", "escrow", "migrate"], capture_output=True, text=True, env=env, check=False
        )
        assert result.returncode == 2
        assert "jurisdictions.EU.hold_max_days" in result.stderr
        assert not (tmp_path / "x.db").exists()

"""The CPU-training process settings apply only where JAX runs on the CPU alone."""

from xgen_core.train import host


def test_cpu_only_follows_jax_platforms(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert host.cpu_only()
    monkeypatch.setenv("JAX_PLATFORMS", "tpu,cpu")
    assert not host.cpu_only()
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    assert not host.cpu_only()


def test_configure_skips_accelerator_hosts(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "tpu")
    monkeypatch.setattr(host, "_configured", False)
    monkeypatch.setattr(host, "keep_freed_memory", lambda: (_ for _ in ()).throw(AssertionError("applied")))
    assert host.configure_cpu_training() is False

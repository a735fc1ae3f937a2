//! The Vagrant provider (vagrant-libvirt). Built so far: the cluster's `Vagrantfile`
//! ([`pangaea_compiler::vagrantfile`]), which `pangaea-ctl compile` writes and the test
//! suite runs through the real `vagrant validate`, and the choice of libvirt driver
//! ([`driver`]). Not built yet: the provider that drives the vagrant CLI (`up`, `halt`,
//! `destroy`, `status --machine-readable`) and the box it boots.

use pangaea_compiler::vagrantfile::{Driver, Vagrantfile};

/// The libvirt driver for this host, and why: KVM where the CPU offers hardware
/// virtualization (`vmx` or `svm`) and `/dev/kvm` exists; otherwise software emulation. A
/// nested KVM without those flags (like kvm_pvm) cannot run a stock kernel: vagrant-libvirt
/// then fails at "Starting domain" with `failed to set MSR`.
pub fn driver() -> (Driver, String) {
    let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw = flags
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    choose(std::path::Path::new("/dev/kvm").exists(), hw)
}

fn choose(dev_kvm: bool, hw_flags: bool) -> (Driver, String) {
    match (dev_kvm, hw_flags) {
        (true, true) => (Driver::Kvm, "KVM: /dev/kvm and hardware virtualization".into()),
        (false, _) => (
            Driver::Qemu,
            "software emulation (qemu): no /dev/kvm; machines boot several times slower".into(),
        ),
        (true, false) => (
            Driver::Qemu,
            "software emulation (qemu): /dev/kvm exists but the CPU offers no vmx/svm (a nested KVM that cannot boot a stock kernel); machines boot several times slower".into(),
        ),
    }
}

/// The Vagrantfile of compilation `c`, its seed ISOs in `state`'s vagrant directory.
pub fn vagrantfile(
    c: &crate::compile::Compilation,
    state: &crate::state_dir::StateDir,
    driver: Driver,
) -> Vagrantfile {
    let seed = state.vagrant().join("seed");
    let seed = std::path::absolute(&seed).unwrap_or(seed);
    Vagrantfile::for_cluster(
        &c.model,
        &c.loaded.config.provider,
        driver,
        &seed.display().to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_only_with_the_device_and_the_cpu_flags() {
        assert_eq!(choose(true, true).0, Driver::Kvm);
        assert_eq!(choose(false, true).0, Driver::Qemu);
        let (d, why) = choose(true, false);
        assert_eq!(d, Driver::Qemu);
        assert!(why.contains("vmx/svm"), "{why}");
    }
}

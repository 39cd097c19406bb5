//! The choice of user-mode-linux kernel (`tests/src/uml/kernel.rs`) with real boots: a
//! kernel that cannot boot is passed over, with the console's reason, for one that can.
//! (The refusals themselves are unit tests of that module, with fake kernels.)

use std::os::unix::fs::PermissionsExt;

use svcproxy_tests::uml::{self, Kernel, kernel};

#[test]
fn a_kernel_that_cannot_boot_is_passed_over_for_one_that_can() {
    if !uml::require_uml() {
        return;
    }
    let good = kernel::kernel().expect("require_uml said yes").clone();
    // Dies as Debian 12's kernel does on an Intel host with AMX.
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("broken-uml");
    std::fs::create_dir_all(&dir).unwrap();
    let binary = dir.join("linux.uml");
    std::fs::write(
        &binary,
        "#!/bin/sh\n\
         echo 'userspace - ptrace set fp regs failed, errno = 14'\n\
         echo 'Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b'\n\
         exit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    let broken = Kernel {
        binary,
        modules: good.modules.clone(),
        origin: "a kernel that panics".into(),
    };

    let (booted, tried) = kernel::select(&[broken, good.clone()]).unwrap();
    assert_eq!(booted.kernel, good);
    assert!(
        good.modules.join(&booted.release).is_dir(),
        "the guest reported release {:?}, which has no module tree in {}",
        booted.release,
        good.modules.display()
    );
    assert_eq!(tried.len(), 1, "{tried:?}");
    assert!(tried[0].contains("a kernel that panics"), "{tried:?}");
    assert!(
        tried[0].contains("ptrace set fp regs failed, errno = 14"),
        "{tried:?}"
    );
    println!("chosen: {}", booted.describe());
}

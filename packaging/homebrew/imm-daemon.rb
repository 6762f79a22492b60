# Homebrew formula for imm-daemon, built from source. The `service` block makes
# `brew services start imm-daemon` run it as a launchd agent (the same settings as
# launchd/dev.imm-daemon.agent.plist, which `imm-daemon service install` writes instead).
class ImmDaemon < Formula
  desc "Microsoft 365 / Exchange Online sign-in, mail queue and inactive-mailbox inventory"
  homepage "https://example.invalid/imm-daemon"
  # Set url and sha256 to a release tarball when publishing.
  url "https://example.invalid/imm-daemon/archive/v0.1.0.tar.gz"
  sha256 "0000000000000000000000000000000000000000000000000000000000000000"
  head "https://example.invalid/imm-daemon.git", branch: "main"

  depends_on "rust" => :build

  def install
    system "cargo", "install", *std_cargo_args
    (man1/"imm-daemon.1").write Utils.safe_popen_read(bin/"imm-daemon", "man")
    generate_completions_from_executable(bin/"imm-daemon", "completions")
  end

  service do
    run [opt_bin/"imm-daemon", "run"]
    keep_alive successful_exit: false
    process_type :background
    log_path var/"log/imm-daemon.log"
    error_log_path var/"log/imm-daemon.log"
  end

  test do
    ENV["IMM_HOME"] = testpath
    assert_match "not running", shell_output("#{bin}/imm-daemon status", 3)
    system bin/"imm-daemon", "config", "init"
    system bin/"imm-daemon", "config", "check"
  end
end

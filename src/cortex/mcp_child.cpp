#include "cortex/mcp_child.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fmt/format.h>
#include <stdexcept>

extern char** environ;

namespace synapse::cortex {

namespace {

struct Pipe {
  int r = -1;
  int w = -1;
};

Pipe make_pipe() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error(fmt::format("pipe: {}", std::strerror(errno)));
  return Pipe{fds[0], fds[1]};
}

void close_fd(int& fd) {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

std::string resolve(const std::string& command, const std::vector<std::pair<std::string, std::string>>& env) {
  if (command.find('/') != std::string::npos) return command;
  // PATH as the child will see it: an `env` override wins.
  std::string path = ::getenv("PATH") ? ::getenv("PATH") : "/usr/local/bin:/usr/bin:/bin";
  for (const auto& [k, v] : env) {
    if (k == "PATH") path = v;
  }
  std::size_t start = 0;
  while (start <= path.size()) {
    const auto colon = path.find(':', start);
    std::string dir = path.substr(start, colon == std::string::npos ? std::string::npos : colon - start);
    if (dir.empty()) dir = ".";
    const std::string full = dir + "/" + command;
    if (::access(full.c_str(), X_OK) == 0) return full;
    if (colon == std::string::npos) break;
    start = colon + 1;
  }
  throw std::runtime_error(fmt::format("{}: not found in PATH", command));
}

std::string describe_status(int status) {
  if (WIFEXITED(status)) return fmt::format("exit status {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return fmt::format("killed by signal {}", WTERMSIG(status));
  return "ended";
}

// In the child, between fork and exec: async-signal-safe calls only.
[[noreturn]] void child_exec(const char* path, char* const* argv, char* const* envp, const char* cwd, pid_t parent,
                             int in_r, int out_w, int err_w, int status_w, int max_fd) {
  ::setpgid(0, 0);
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) ::_exit(127);  // the parent died before prctl
  int err = 0;
  if (::dup2(in_r, 0) < 0 || ::dup2(out_w, 1) < 0 || ::dup2(err_w, 2) < 0) err = errno;
  if (!err && cwd && ::chdir(cwd) != 0) err = errno;
  if (!err) {
    // Every other descriptor (sockets, SQLite files) closes at exec; the
    // status pipe too, which tells the parent the exec succeeded.
#ifdef SYS_close_range
    if (::syscall(SYS_close_range, 3u, ~0u, 4u /* CLOSE_RANGE_CLOEXEC */) != 0)
#endif
    {
      for (int fd = 3; fd < max_fd; ++fd) ::fcntl(fd, F_SETFD, FD_CLOEXEC);
    }
    sigset_t none;
    ::sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    for (int sig = 1; sig < NSIG; ++sig) ::signal(sig, SIG_DFL);
    ::execve(path, argv, envp);
    err = errno;
  }
  [[maybe_unused]] auto n = ::write(status_w, &err, sizeof err);
  ::_exit(127);
}

}  // namespace

ChildProcess spawn_child(const ChildSpec& spec) {
  const std::string path = resolve(spec.command, spec.env);

  // Everything exec needs is built before fork: the child may not allocate.
  std::vector<std::string> argv_s{spec.command};
  argv_s.insert(argv_s.end(), spec.args.begin(), spec.args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<std::string> env_s;
  for (char** e = environ; e && *e; ++e) {
    const std::string_view kv(*e);
    const auto eq = kv.find('=');
    bool overridden = false;
    for (const auto& [k, v] : spec.env) overridden |= kv.substr(0, eq) == k;
    if (!overridden) env_s.emplace_back(kv);
  }
  for (const auto& [k, v] : spec.env) env_s.push_back(k + "=" + v);
  std::vector<char*> envp;
  for (auto& e : env_s) envp.push_back(e.data());
  envp.push_back(nullptr);
  rlimit rl{};
  int max_fd = 65536;
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) max_fd = static_cast<int>(rl.rlim_cur);

  Pipe in = make_pipe(), out, err, status;
  try {
    out = make_pipe();
    err = make_pipe();
    status = make_pipe();
  } catch (...) {
    for (int* fd : {&in.r, &in.w, &out.r, &out.w, &err.r, &err.w}) close_fd(*fd);
    throw;
  }
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid == 0) {
    child_exec(path.c_str(), argv.data(), envp.data(), spec.cwd.empty() ? nullptr : spec.cwd.c_str(), parent, in.r,
               out.w, err.w, status.w, max_fd);
  }
  const int fork_errno = errno;
  close_fd(in.r);
  close_fd(out.w);
  close_fd(err.w);
  close_fd(status.w);
  if (pid < 0) {
    for (int* fd : {&in.w, &out.r, &err.r, &status.r}) close_fd(*fd);
    throw std::runtime_error(fmt::format("fork: {}", std::strerror(fork_errno)));
  }
  ::setpgid(pid, pid);  // also here, so a kill right after spawn finds the group
  int child_errno = 0;
  ssize_t n = 0;
  do {
    n = ::read(status.r, &child_errno, sizeof child_errno);
  } while (n < 0 && errno == EINTR);
  close_fd(status.r);
  if (n > 0) {
    int st = 0;
    while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    for (int* fd : {&in.w, &out.r, &err.r}) close_fd(*fd);
    throw std::runtime_error(fmt::format("cannot run {}{}: {}", path,
                                         spec.cwd.empty() ? "" : " in " + spec.cwd, std::strerror(child_errno)));
  }
  return ChildProcess{pid, in.w, out.r, err.r};
}

std::string try_reap(pid_t pid) {
  int st = 0;
  pid_t r = 0;
  do {
    r = ::waitpid(pid, &st, WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r == pid) return describe_status(st);
  if (r < 0) return "gone";
  return "";
}

std::string kill_and_reap(pid_t pid) {
  if (pid <= 0) return "gone";
  if (std::string s = try_reap(pid); !s.empty()) {
    // Just reaped (not "gone": that pid is no longer ours): what it left
    // running in its group goes too.
    if (s != "gone") ::kill(-pid, SIGKILL);
    return s;
  }
  ::kill(-pid, SIGKILL);
  ::kill(pid, SIGKILL);
  int st = 0;
  pid_t r = 0;
  do {
    r = ::waitpid(pid, &st, 0);
  } while (r < 0 && errno == EINTR);
  return r == pid ? describe_status(st) : "gone";
}

}  // namespace synapse::cortex

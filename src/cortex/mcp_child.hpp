// A child process with its standard streams on pipes: how an MCP stdio
// server is run. POSIX only (fork/exec); the MCP client's own thread calls
// these, never an I/O thread (spawning and reaping may take milliseconds).
#pragma once

#include <sys/types.h>

#include <string>
#include <utility>
#include <vector>

namespace synapse::cortex {

struct ChildProcess {
  pid_t pid = -1;
  int stdin_fd = -1;   // write end: the child's standard input
  int stdout_fd = -1;  // read end: the child's standard output
  int stderr_fd = -1;  // read end: the child's standard error
};

struct ChildSpec {
  std::string command;  // looked up in PATH unless it contains a '/'
  std::vector<std::string> args;
  std::vector<std::pair<std::string, std::string>> env;  // added to (or replacing in) this process's environment
  std::string cwd;  // empty: this process's working directory
};

// Starts `spec`. The child runs in a process group of its own (so the
// grandchildren a wrapper script starts are killed with it), gets SIGKILL
// when the thread that spawned it ends (PR_SET_PDEATHSIG: the MCP client's
// thread outlives its children, and ends with the process, so no child
// survives a crash of Synapse), inherits no descriptor but its three pipes,
// and has default signal dispositions and mask. Returns once exec
// succeeded; throws std::runtime_error saying why it failed (command not
// found, bad cwd, exec error), with no child left behind.
ChildProcess spawn_child(const ChildSpec& spec);

// Kills the child's process group with SIGKILL (unless it already exited)
// and reaps it. Returns a description of how it ended ("exit status 1",
// "killed by signal 9"). Closes nothing: the caller owns the descriptors.
std::string kill_and_reap(pid_t pid);

// Reaps the child if it exited already; "" if it is still running.
std::string try_reap(pid_t pid);

}  // namespace synapse::cortex

// The MCP client's child processes: environment, working directory, the
// descriptors a child gets, and spawn failures reported without a child
// left behind.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <string>

#include "cortex/mcp_child.hpp"

using namespace synapse::cortex;

namespace {

std::string read_all(int fd) {
  std::string out;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  return out;
}

void close_all(const ChildProcess& c) {
  for (int fd : {c.stdin_fd, c.stdout_fd, c.stderr_fd}) ::close(fd);
}

}  // namespace

TEST(McpChild, RunsWithItsEnvCwdAndOnlyThreeDescriptors) {
  // A descriptor of ours without O_CLOEXEC must not reach the child either.
  const int leak = ::open("/dev/null", O_RDONLY);
  ASSERT_GE(leak, 0);
  ChildSpec spec{"sh", {"-c", "echo \"$SYNAPSE_MCP_TEST\"; pwd; ls /proc/self/fd | wc -l; echo oops >&2"},
                 {{"SYNAPSE_MCP_TEST", "it works"}}, "/tmp"};
  const ChildProcess c = spawn_child(spec);
  ASSERT_GT(c.pid, 0);
  ::close(c.stdin_fd);
  const std::string out = read_all(c.stdout_fd);
  const std::string err = read_all(c.stderr_fd);
  EXPECT_EQ(kill_and_reap(c.pid), "exit status 0");
  // ls counts 0, 1, 2 and the directory it reads.
  EXPECT_EQ(out, "it works\n/tmp\n4\n");
  EXPECT_EQ(err, "oops\n");
  ::close(c.stdout_fd);
  ::close(c.stderr_fd);
  ::close(leak);
}

TEST(McpChild, KillAndReapEndsARunningChild) {
  const ChildProcess c = spawn_child(ChildSpec{"sleep", {"30"}, {}, ""});
  EXPECT_EQ(try_reap(c.pid), "");  // still running
  EXPECT_EQ(kill_and_reap(c.pid), "killed by signal 9");
  EXPECT_EQ(::kill(c.pid, 0), -1);
  close_all(c);
}

TEST(McpChild, FailuresSayWhy) {
  try {
    spawn_child(ChildSpec{"no-such-mcp-server-xyz", {}, {}, ""});
    FAIL() << "spawned a command that does not exist";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("not found in PATH"), std::string::npos) << e.what();
  }
  try {
    spawn_child(ChildSpec{"/bin/true", {}, {}, "/no/such/dir"});
    FAIL() << "spawned into a missing directory";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("/no/such/dir"), std::string::npos) << e.what();
  }
  try {
    spawn_child(ChildSpec{"/etc/hostname", {}, {}, ""});  // not executable
    FAIL() << "executed a file that is not executable";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot run"), std::string::npos) << e.what();
  }
}

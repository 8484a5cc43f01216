// Device resolution on simulated machines.
#include "catch_compat.hpp"

#include <ltxmps/device.hpp>

#include <cstdlib>
#include <string>

using ltxmps::Capabilities;
using ltxmps::DeviceRequest;
using ltxmps::resolve_device;

namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const ltxmps::Error& e) {
    return e.what();
  }
  return "<no error>";
}

Capabilities cuda_and_mps() {
  auto c = Capabilities::cuda(2, 8, 6);
  c.mps_available = true;  // not a real machine, but the cascade must still prefer CUDA
  c.macos_version = ltxmps::MacOSVersion{14, 0};
  return c;
}

}  // namespace

TEST_CASE("auto cascades CUDA -> MPS -> CPU", "[device]") {
  const auto req = DeviceRequest::parse("auto");
  CHECK(resolve_device(req, Capabilities::cpu_only()).device == c10::Device("cpu"));
  CHECK(resolve_device(req, Capabilities::cuda(1)).device == c10::Device("cuda:0"));
  CHECK(resolve_device(req, Capabilities::mps(14, 0)).device == c10::Device("mps"));
  CHECK(resolve_device(req, cuda_and_mps()).device == c10::Device("cuda:0"));
  CHECK(resolve_device(req, Capabilities::cpu_only()).reason.rule == "device.auto.cpu");
  CHECK(resolve_device(req, Capabilities::mps(13, 0)).reason.rule == "device.auto.mps");
  auto xpu = Capabilities::cpu_only();
  xpu.xpu_device_count = 1;
  CHECK(resolve_device(req, xpu).device == c10::Device("xpu:0"));
}

TEST_CASE("explicit requests are honoured or fail with what is available", "[device]") {
  CHECK(resolve_device(DeviceRequest::parse("cpu"), cuda_and_mps()).device == c10::Device("cpu"));
  CHECK(resolve_device(DeviceRequest::parse("mps"), cuda_and_mps()).device == c10::Device("mps"));
  CHECK(resolve_device(DeviceRequest::parse("cuda:1"), cuda_and_mps()).device == c10::Device("cuda:1"));
  CHECK(resolve_device(DeviceRequest::parse("CUDA"), cuda_and_mps()).device == c10::Device("cuda:0"));
  CHECK(resolve_device(DeviceRequest::parse("cuda"), cuda_and_mps()).reason.rule == "device.explicit");

  const auto no_cuda = error_of([] { resolve_device(DeviceRequest::parse("cuda"), Capabilities::mps(15, 0)); });
  CHECK_THAT(no_cuda, ltxmps_test::Contains("CUDA is not available"));
  CHECK_THAT(no_cuda, ltxmps_test::Contains("available: mps, cpu"));

  const auto bad_index = error_of([] { resolve_device(DeviceRequest::parse("cuda:2"), Capabilities::cuda(2)); });
  CHECK_THAT(bad_index, ltxmps_test::Contains("has 2 CUDA device(s)"));
  CHECK_THAT(bad_index, ltxmps_test::Contains("cuda:0, cuda:1, cpu"));

  const auto no_mps = error_of([] { resolve_device(DeviceRequest::parse("mps"), Capabilities::cuda(1)); });
  CHECK_THAT(no_mps, ltxmps_test::Contains("MPS is not available"));
  CHECK_THAT(no_mps, ltxmps_test::Contains("cuda:0, cpu"));
}

TEST_CASE("malformed device requests are errors naming the text", "[device]") {
  CHECK_THAT(error_of([] { DeviceRequest::parse("gpu"); }), ltxmps_test::Contains("device 'gpu' is not one of"));
  CHECK_THAT(error_of([] { DeviceRequest::parse("cuda:x"); }), ltxmps_test::Contains("must be a number"));
  CHECK_THAT(error_of([] { DeviceRequest::parse("cuda:"); }), ltxmps_test::Contains("must be a number"));
  CHECK_THAT(error_of([] { DeviceRequest::parse("mps:1"); }), ltxmps_test::Contains("only cuda and xpu take an index"));
  CHECK(DeviceRequest::parse("").automatic);
}

TEST_CASE("LTXMPS_DEVICE supplies the request when set", "[device]") {
  ::setenv(ltxmps::kDeviceEnvironmentVariable, "cpu", 1);
  auto r = DeviceRequest::from_environment("auto");
  CHECK_FALSE(r.automatic);
  CHECK(resolve_device(r, Capabilities::cuda(1)).device == c10::Device("cpu"));

  ::setenv(ltxmps::kDeviceEnvironmentVariable, "tpu", 1);
  CHECK_THAT(error_of([] { DeviceRequest::from_environment(); }), ltxmps_test::Contains("LTXMPS_DEVICE"));

  ::unsetenv(ltxmps::kDeviceEnvironmentVariable);
  CHECK(DeviceRequest::from_environment("mps").type == c10::DeviceType::MPS);
  CHECK(DeviceRequest::from_environment().automatic);
}

TEST_CASE("the probe describes this machine and is cached", "[device]") {
  const auto& a = ltxmps::current_capabilities();
  const auto& b = ltxmps::current_capabilities();
  CHECK(&a == &b);
  CHECK_FALSE(a.simulated);
  CHECK(a.torch_version == TORCH_VERSION);
  CHECK(a.cuda_available() == torch::cuda::is_available());
  CHECK(a.mps_available == torch::mps::is_available());
  CHECK_THAT(ltxmps::describe(a), ltxmps_test::Contains("CPU yes"));
  CHECK_THAT(ltxmps::describe(Capabilities::cuda(1, 9, 0)), ltxmps_test::Contains("cuda:0 sm_90"));
  CHECK_THAT(ltxmps::describe(Capabilities::mps(14, 5)), ltxmps_test::Contains("macOS 14.5"));
}

// Generates a short video with the installed pipeline library and its embedded default model (built in memory,
// random weights: the frames are noise-like) and writes it as a folder of PNG frames (or a video file, given a
// name like out.mp4 and an FFmpeg-enabled build).
#include <ltxmps/ltxmps.hpp>
#include <ltxmps_pipeline/pipeline.hpp>
#include <ltxmps_pipeline/video_io.hpp>

#include <exception>
#include <iostream>

int main(int argc, char** argv) {
  namespace lp = ltxmps::pipeline;
  try {
    const ltxmps::ExecutionPlan plan = ltxmps::resolve(ltxmps::LoaderSettings{});
    auto model = lp::make_embedded_default_model(plan);

    lp::GenerateRequest request;  // LTXPipeline: text to video
    request.prompts = {"a red fox running through snow"};
    request.height = 64;
    request.width = 64;
    request.num_frames = 9;
    request.num_inference_steps = 2;
    request.seed = 42;
    const auto result = lp::generate(model, request, plan);

    const auto written = lp::write_video(argc > 1 ? argv[1] : "pipeline_consumer_frames", result.frames[0]);
    std::cout << written.frames << " frames of " << written.width << "x" << written.height << " on " << plan.device
              << " (" << written.codec << ") -> " << written.path.string() << "\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "pipeline_consumer: " << e.what() << "\n";
    return 1;
  }
}

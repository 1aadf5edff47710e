mod analyze;
mod analyze_fuzz;
mod cli;
mod privileged;
mod privileged_export;
mod reliability;
mod schema;
mod tracepoint;

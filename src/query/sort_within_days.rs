//! Sorting one day at a time: a physical optimizer rule for plans over lake
//! tables.
//!
//! A lake table is read in day order (its scans declare it, see
//! [`LakeTable`](super::LakeTable)), so a sort whose first key is that day, such
//! as the sort under `ROW_NUMBER() OVER (PARTITION BY created_at_day ORDER BY …)`
//! or under `ORDER BY transaction_date, transaction_id`, only has to order the
//! rows of each day among themselves. DataFusion does that with a
//! [`PartialSortExec`] for unbounded inputs only; for a bounded one it sorts
//! everything, spilling once the memory pool is full (3M rows of a staging model
//! took seconds of spill writes and reads). This rule makes the same choice for
//! bounded inputs, when the ordered prefix is a day (a `Date32` column): the
//! sort then holds one day's rows, not the table's.
//!
//! One day's rows are held in memory without spilling: a table with a single
//! day far larger than the memory pool should not rely on it.

use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::error::Result;
use datafusion::physical_expr::LexOrdering;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::sorts::partial_sort::PartialSortExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};

/// Replaces a full sort by a sort within each day when its input is already
/// ordered by the day that leads its keys.
#[derive(Debug, Default)]
pub struct SortWithinDays;

impl PhysicalOptimizerRule for SortWithinDays {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|plan| {
            let Some(sort) = plan.downcast_ref::<SortExec>() else {
                return Ok(Transformed::no(plan));
            };
            // A top-k sort (LIMIT) keeps only k rows already.
            if sort.fetch().is_some() {
                return Ok(Transformed::no(plan));
            }
            let input = sort.input();
            let keys = sort.expr();
            let ordered = input.equivalence_properties();
            let mut prefix = 0;
            while prefix < keys.len() && ordered.ordering_satisfy(keys[..=prefix].to_vec())? {
                prefix += 1;
            }
            let by_day = prefix > 0
                && keys[..prefix].iter().all(|key| {
                    key.expr
                        .data_type(&input.schema())
                        .is_ok_and(|t| t == DataType::Date32)
                });
            if !by_day || prefix == keys.len() {
                return Ok(Transformed::no(plan));
            }
            let keys: LexOrdering = keys.clone();
            let partial = PartialSortExec::new(keys, Arc::clone(input), prefix)
                .with_preserve_partitioning(sort.preserve_partitioning());
            Ok(Transformed::yes(Arc::new(partial) as Arc<dyn ExecutionPlan>))
        })
        .data()
    }

    fn name(&self) -> &str {
        "sort_within_days"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

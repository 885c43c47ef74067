"""A Segment Statistics plugin that reports relevance measures of a MedXAI attribution per segment.

Select the attribution result as the "Scalar volume" in the Segment Statistics module: the table
then gains the columns of :mod:`MedXAIRuntime.relevanceMeasures` (relevance share, density ratio,
rank accuracy of |relevance|, distance of the map's maximum, ...). For any other scalar volume the plugin reports nothing, so
ordinary intensity statistics are unchanged.

This module subclasses Slicer's ``SegmentStatisticsPluginBase`` (which imports qt), so only Slicer
imports it: :func:`registerPlugin` runs when Slicer has started (``startupCompleted``, connected in
``MedXAI.__init__``). The measurements themselves are computed by the Qt-free
:func:`MedXAIRuntime.relevanceMeasures.relevanceMeasures`, which is unit tested.

The plugin follows ``ScalarVolumeSegmentStatisticsPlugin`` (Slicer/Slicer
``Modules/Scripted/SegmentStatistics/SegmentStatisticsPlugins``): it reads the ``Segmentation`` and
``ScalarVolume`` parameters of the Segment Statistics parameter node and returns a dictionary of the
requested keys from :meth:`computeStatistics`.
"""

from __future__ import annotations

import logging

import slicer
from SegmentStatisticsPlugins import SegmentStatisticsPluginBase

from . import relevanceMeasures

__all__ = ["MedXAIRelevanceSegmentStatisticsPlugin", "registerPlugin"]


class MedXAIRelevanceSegmentStatisticsPlugin(SegmentStatisticsPluginBase):
    """Relevance measures of a MedXAI attribution volume inside each segment."""

    def __init__(self):
        super().__init__()
        self.name = "MedXAI Relevance"
        self.title = "MedXAI relevance"
        self.keys = list(relevanceMeasures.PLUGIN_KEYS)
        self.defaultKeys = list(relevanceMeasures.DEFAULT_KEYS)

    def computeStatistics(self, segmentID):
        requestedKeys = self.getRequestedKeys()
        if not requestedKeys:
            return {}
        parameterNode = self.getParameterNode()
        segmentationNode = slicer.mrmlScene.GetNodeByID(parameterNode.GetParameter("Segmentation"))
        volumeNode = slicer.mrmlScene.GetNodeByID(parameterNode.GetParameter("ScalarVolume"))
        if segmentationNode is None or not relevanceMeasures.isAttributionNode(volumeNode):
            return {}  # not an attribution: leave the intensity statistics alone
        from MedXAIBridge import segments, volumes

        from MedXAILib.errors import MedXAIError

        segment = segmentationNode.GetSegmentation().GetSegment(segmentID)
        try:
            mask = segments.maskFromSegment(segmentationNode, segmentID, volumeNode)
            attribution = volumes.imageVolumeFromNode(volumeNode)
            return relevanceMeasures.relevanceMeasures(attribution.array, mask, attribution.affine,
                                                      segment.GetName() if segment else segmentID, requestedKeys)
        except MedXAIError as error:  # an empty segment on this grid: no values, as the core plugins do
            logging.info(f"MedXAI relevance statistics skip segment {segmentID}: {error}")
            return {}

    def getMeasurementInfo(self, key):
        info = relevanceMeasures.measurementInfo(key)
        if info is None:
            return None
        return self.createMeasurementInfo(name=info["name"], title=info["title"], description=info["description"],
                                          units=info["units"])


def registerPlugin() -> bool:
    """Register the plugin with Segment Statistics once (True when it was added now)."""
    try:
        from SegmentStatistics import SegmentStatisticsLogic
    except ImportError:  # a Slicer build without the Segment Statistics module
        logging.warning("MedXAI: Segment Statistics is not available; its relevance plugin is not registered")
        return False
    registered = {cls.__name__ for cls in SegmentStatisticsLogic.registeredPlugins}
    if MedXAIRelevanceSegmentStatisticsPlugin.__name__ in registered:
        return False
    SegmentStatisticsLogic.registerPlugin(MedXAIRelevanceSegmentStatisticsPlugin())
    return True
